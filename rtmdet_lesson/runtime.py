"""Small helpers every chapter uses: the device, seeding and the fast-mode flag (chapter 00)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

FAST_ENV = "RTMDET_LESSON_FAST"
DEVICE_ENV = "RTMDET_LESSON_DEVICE"  # e.g. "cpu": the default device wherever none is given (the unit tests set it)


def fast_mode() -> bool:
    """True when ``RTMDET_LESSON_FAST`` is set to a true value (``make test`` sets it to 1).

    Fast mode shrinks image sizes, dataset sizes and iteration counts so that every notebook runs in
    seconds; a notebook prints the same shapes and counts in both modes.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pick_device(prefer: str | None = None) -> torch.device:
    """The best device available: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (for example ``"cpu"``, ``"cuda:1"``) overrides the choice, and so does the environment variable
    ``RTMDET_LESSON_DEVICE`` when ``prefer`` is None; a device this machine does not have is refused with a
    ValueError that says what it has.
    """
    prefer = prefer if prefer is not None else os.environ.get(DEVICE_ENV) or None
    if prefer is not None:
        return _checked(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checked(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {str(name)!r}; use cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(name)!r} asked for, but this machine has no usable CUDA GPU (torch "
                             f"{torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(name)!r} asked for, but this machine has {count} CUDA GPU(s): "
                             f"cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(name)!r} asked for, but MPS (Apple GPUs) is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"device {str(name)!r} is not supported here; use cpu, cuda or mps")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a ``torch.Generator`` seeded the same way for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def banner() -> str:
    """One line for a notebook's set-up cell: torch version, device and mode."""
    mode = "FAST (set by RTMDET_LESSON_FAST)" if fast_mode() else "full"
    return f"torch {torch.__version__} | device {pick_device()} | mode {mode}"
