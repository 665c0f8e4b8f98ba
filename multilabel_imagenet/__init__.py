"""Multi-label ImageNet: soft labels from MaskCut proposals and a region labeler."""

__version__ = "0.1.0"
