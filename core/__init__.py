"""carpulse core: shared contracts (wire messages, topic names, config models, errors); imports nothing of ours."""

__version__ = "0.1.0"
