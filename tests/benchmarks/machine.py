"""What a benchmark ran on, said the same way in every results file."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(gpu: str = "") -> str:
    """``gpu``: the GPU's name when the benchmark ran on one."""
    import torch

    if gpu:
        return f"GPU: {gpu} (torch {torch.__version__})"
    threads = torch.get_num_threads()
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, {threads} torch threads (torch {torch.__version__})"
