"""Workstation side: build what a device runs (task n-gram tables; ONNX/GGUF bundles later)."""
