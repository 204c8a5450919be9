"""Licence-plate reading for dealer gates: locate, recognise (PP-OCR via onnxruntime), check, vote."""
