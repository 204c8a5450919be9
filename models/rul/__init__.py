"""Remaining-useful-life regression on C-MAPSS-style degradation series (numba features, ONNX model)."""
