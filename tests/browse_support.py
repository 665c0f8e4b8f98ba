"""Helpers shared by the browser tests (no tests here): headless Chromium, a tiny labeler, a demo-like dataset."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_dataset_support import synthetic_records

from multilabel_imagenet.builder import backbones, labeler
from multilabel_imagenet.dataset import writer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DEMO_BUILD = writer.BuildInfo(
    version="1.0.0",
    source="multilabel-imagenet build",
    inputs={"images:train": "sha256:" + "0" * 64},
    parameters={"maskcut_preset": "synthetic"},
    models={"labeler": "colour-texture"},
)
"""The build.json entries that mark the synthetic demo's output (scenes beside the dataset folder)."""


def browser_or_skip() -> None:
    """Skip the calling test unless selenium, Chromium and its driver are installed."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium driven by selenium through Debian's chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver, path: Path) -> Path:
    """The whole page (not only the window) as a PNG at ``path``."""
    import base64

    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def tiny_labeler(path: Path) -> Path:
    """A random-weight head over the weight-free colour/texture backbone, saved as a labeler checkpoint."""
    config = labeler.LabelerConfig(backbone="colour-texture", input_size=128, hidden=32)
    in_dim = backbones.load_backbone("colour-texture", "patch")(torch.zeros(1, 3, 128, 128)).shape[-1]
    torch.manual_seed(0)
    labeler.save_checkpoint(path, labeler.LabelerHead(in_dim, 32, 1000, 0.0), config)
    return path


def demo_dataset(root: Path, num_train: int = 6, num_val: int = 4):
    """The synthetic demo's layout without running the build: ``root/scenes`` and ``root/multilabel-imagenet``
    (records of :func:`test_dataset_support.synthetic_records`). Returns (folder, labels, proposals)."""
    labels, proposals = synthetic_records(root / "scenes", num_train, num_val)
    folder = writer.write_dataset(root / "multilabel-imagenet", DEMO_BUILD, labels=labels, proposals=proposals)
    return folder, labels, proposals
