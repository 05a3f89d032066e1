"""Inference engines: each runs an ONNX artifact on a backend and returns numpy outputs."""
