"""Face detection, embedding and matching for consenting members only (embeddings kept, never images)."""
