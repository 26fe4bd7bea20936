"""What a training run tells (chapter 07): one JSON record per step and event in ``log.jsonl``, log lines on
rank 0, and the early warning that the targets do not fit the images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rtmdet_lesson import distributed

log = logging.getLogger("rtmdet_lesson.train")

ZERO_POSITIVE_PATIENCE = 10  # first iterations watched for "objects but no positives"


def check_positives(info, iteration: int, record: dict, positives_seen: float) -> None:
    """No positive priors while there are objects means the targets do not fit the images (mmdetection #11148)."""
    if iteration > ZERO_POSITIVE_PATIENCE or record["num_pos"] > 0 or record["num_gt"] == 0:
        return
    message = (f"iteration {iteration}: {record['num_gt']:.0f} objects but no positive priors. The box and mask "
               "losses cannot learn: check that the boxes are x1y1x2y2 pixels of the network input and the labels "
               "0..C-1 (a category-id mismatch in the annotations is the usual cause)")
    if iteration == ZERO_POSITIVE_PATIENCE and positives_seen == 0:
        raise RuntimeError(message + f"; stopped: no positives in the first {iteration} iterations")
    say(info, message, logging.WARNING)


class JsonLog:
    """Appends one JSON object per line to ``path`` (rank 0 only): every step's losses, lr, and the metrics."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, **record) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def floats(losses: dict) -> dict:
    """The numbers of a losses dict as Python floats, read from the device in one synchronisation."""
    device = next((v.device for v in losses.values() if torch.is_tensor(v)), None)
    values = [torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(()) for v in losses.values()]
    return dict(zip(losses, torch.stack(values).tolist(), strict=True))


def fmt(losses: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in floats(losses).items())


def say(info: distributed.DistInfo, message: str, level: int = logging.INFO) -> None:
    """Log on rank 0, above the progress bar."""
    if info.is_main:
        log.log(level, message)
