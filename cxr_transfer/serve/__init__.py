"""Predict on new files and export to ONNX (the ONNX path imports no torch)."""
