"""What a benchmark ran on, for its JSON (imported by the scripts beside this file)."""

from __future__ import annotations

import os
import platform

import torch


def describe() -> dict:
    """CPU, core count, torch's thread count, the GPU's name (None without CUDA) and the torch version."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
