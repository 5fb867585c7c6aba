"""Torch: models, ImageNet weights, the training modes, the loop, batches, device/speed rules and DDP."""
