"""Torch at run time, for every stage that loads or runs a model: architectures and their ImageNet
weights, the model card, batches, device and precision, the inference path (PyTorch or ONNX
Runtime on an in-memory export) and the measured speed rules."""
