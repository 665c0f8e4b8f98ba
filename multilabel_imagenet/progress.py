"""Progress bars and log verbosity, set once per command line.

Every long-running part of the package makes its bar with :func:`bar`, which is off when the caller asks
(``progress=False``), when the command runs with ``--quiet``, or when the environment says so the usual ways:
``TQDM_DISABLE`` (tqdm's own) or ``HF_DATASETS_DISABLE_PROGRESS_BARS`` (datasets'). Messages go through
:mod:`logging` under the ``multilabel_imagenet`` logger; :func:`configure` sets its level from ``-v``/``--quiet``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tqdm import tqdm

_ENV_SWITCHES = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS")
_quiet = False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def enabled(progress: bool = True) -> bool:
    """Whether a bar asked for with ``progress`` is shown (see the module docstring)."""
    return progress and not _quiet and not any(_env_true(name) for name in _ENV_SWITCHES)


def bar(*args: Any, progress: bool = True, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar, disabled as :func:`enabled` says (``dynamic_ncols`` on)."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, disable=not enabled(progress), **kwargs)


def configure(verbosity: int = 0, quiet: bool = False) -> None:
    """Set the package's log level (warnings; ``-v`` info; ``-vv`` debug; ``--quiet`` errors only) and whether
    bars show; also turns off the progress bars of datasets and huggingface_hub under ``--quiet``."""
    global _quiet
    _quiet = quiet
    level = logging.ERROR if quiet else max(logging.DEBUG, logging.WARNING - 10 * verbosity)
    logger = logging.getLogger("multilabel_imagenet")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    if quiet:
        import datasets
        import huggingface_hub.utils

        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
