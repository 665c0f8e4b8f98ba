"""Multi-label ImageNet: soft labels from MaskCut proposals and a region labeler.

``multilabel_imagenet.load(...)`` loads the published dataset for training (see
:func:`multilabel_imagenet.dataset.loading.load`); it is imported on first use, so ``import multilabel_imagenet``
stays light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load":
        from multilabel_imagenet.dataset.loading import load

        return load
    raise AttributeError(f"module 'multilabel_imagenet' has no attribute {name!r}")
