"""Datasets: the generated pixel sprites and any COCO-format instance dataset (chapters 00 and 07)."""
