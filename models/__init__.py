"""Numba kernels, detectors, maintenance estimators, ONNX models and their training/eval."""
