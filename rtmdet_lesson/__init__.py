"""rtmdet_lesson: RTMDet-Ins built from plain PyTorch, the finished code of the course's chapters.

The promised entry points (see the README):

    from rtmdet_lesson import build_model, load_mmdet_checkpoint, optimize_for_inference
    model = build_model("rtmdet-ins-tiny", num_classes=80)
    load_mmdet_checkpoint(model, "rtmdet-ins_tiny_8xb32-300e_coco.pth")
    fast = optimize_for_inference(model, "fast")  # chapter 09: same answers ("exact") or AP within 0.01 ("fast")

Official weights expect BGR input normalised with ``preprocess.MEAN_BGR`` / ``preprocess.STD_BGR``;
``preprocess.normalize`` turns RGB uint8 images into exactly that, and ``model.predict`` calls it for you.
"""

from rtmdet_lesson.fast import optimize_for_inference
from rtmdet_lesson.model import HeadOutput, RTMDet
from rtmdet_lesson.official_weights import export_mmdet_state_dict, load_mmdet_checkpoint
from rtmdet_lesson.presets import PRESETS, build_model

__all__ = ["PRESETS", "HeadOutput", "RTMDet", "build_model", "export_mmdet_state_dict", "load_mmdet_checkpoint",
           "optimize_for_inference"]
__version__ = "0.1.0"
