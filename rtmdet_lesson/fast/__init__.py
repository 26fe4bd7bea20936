"""Speed work, apart from the lesson modules: each rewrite computes what a chapter's code computes, faster (chapter 09).

Nothing here changes a lesson module; the rewrites are swapped in, on a copy or in place:

- ``inference``: ``optimize_for_inference`` (BN folding, the one-pass class tower, channels-last, low precision,
  ``torch.compile``) returns an ``InferenceModel``;
- ``training``: ``prepare_for_training`` (the one-pass class tower with its BN statistics, channels-last blocks,
  fp32 depthwise convs under CPU bf16, the faster mask loss) and ``keep_freed_memory``;
- ``cls_tower``: one pass of the Ins head's class tower where the reference runs two;
- ``losses``: the mask loss's steps (the chunked dynamic head, the x2 upsampling as matrix products, Dice with a
  logit floor and a hand-written gradient);
- ``dynamic_mask``: the dynamic mask head in cache-sized chunks;
- ``mask_resize``: masks resized only inside each instance's window.

``tests/test_speed.py`` and the tests of each lesson module check that every rewrite equals the plain code.
"""

from rtmdet_lesson.fast.inference import (
    SPEEDS,
    InferenceModel,
    SpeedOptions,
    fold_batchnorm,
    fold_conv_bn,
    low_precision_dtype,
    optimize_for_inference,
)
from rtmdet_lesson.fast.training import keep_freed_memory, prepare_for_training

__all__ = [
    "SPEEDS",
    "InferenceModel",
    "SpeedOptions",
    "fold_batchnorm",
    "fold_conv_bn",
    "keep_freed_memory",
    "low_precision_dtype",
    "optimize_for_inference",
    "prepare_for_training",
]
