"""Fault injection shared by the tests: reads of one image that the file system fails."""

import errno
import os

from PIL import Image

from multilabel_imagenet import images


def fail_reads(monkeypatch, path, code: int = errno.EIO, times: int | None = None) -> list:
    """Make ``Image.open(path)`` raise ``OSError(code)`` on its first ``times`` calls (every call when None), with
    no wait between tries; returns the log of calls to it."""
    real, calls = Image.open, []

    def failing(fp, *args, **kwargs):
        if str(fp) == str(path):
            calls.append(code)
            if times is None or len(calls) <= times:
                raise OSError(code, os.strerror(code), str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", failing)
    monkeypatch.setattr(images, "RETRY_SECONDS", 0.0)
    return calls
