"""Shortcut probes and Grad-CAM: what else a model could be reading."""
