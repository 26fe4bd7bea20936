"""rtmdet_lesson: RTMDet-Ins built from plain PyTorch, the finished code of the course's chapters."""

__version__ = "0.1.0"
