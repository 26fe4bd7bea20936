"""CocoInstanceDataset on hand-made tiny COCO files and on the generated sprites; every bad input's message."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from rtmdet_lesson.data.coco import CocoInstanceDataset, decode_segmentation, sprites_split
from rtmdet_lesson.data.sprites import SPRITE_CLASSES, generate_sprites

H, W = 5, 6

# A 3x2 rectangle: corners (1, 1) and (4, 3) on pixel edges cover columns 1..3 and rows 1..2.
POLYGON_MASK = np.zeros((H, W), np.uint8)
POLYGON_MASK[1:3, 1:4] = 1
# Column 2, rows 1..3, written by hand as column-major runs: 2*5 + 1 zeros, 3 ones, the remaining 16 zeros.
UNCOMPRESSED_MASK = np.zeros((H, W), np.uint8)
UNCOMPRESSED_MASK[1:4, 2] = 1
UNCOMPRESSED = {"size": [H, W], "counts": [11, 3, 16]}
# An L shape for the compressed RLE.
COMPRESSED_MASK = np.zeros((H, W), np.uint8)
COMPRESSED_MASK[2:5, 4] = 1
COMPRESSED_MASK[4, 3:6] = 1


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def tiny_coco() -> dict:
    """Image 1 (H x W RGB) with three objects and a crowd region, image 2 (grey, no objects).

    Category ids 3 and 7 on purpose: labels must become 0 and 1, not id - 1.
    """
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [1, 1, 3, 2],
             "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
            {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [2, 1, 1, 3],
             "segmentation": UNCOMPRESSED},
            {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 1, "bbox": [0, 0, 6, 5],
             "segmentation": compressed(np.ones((H, W), np.uint8))},
            {"id": 4, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [3, 2, 3, 3],
             "segmentation": compressed(COMPRESSED_MASK)},
        ],
    }  # fmt: skip


def write(tmp_path, coco: dict):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    rgb = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    Image.fromarray(rgb).save(images / "a.png")
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(images / "b.png")  # single-channel
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(coco))
    return images, ann_file


@pytest.fixture
def tiny(tmp_path):
    return CocoInstanceDataset(*write(tmp_path, tiny_coco()))


def test_labels_come_from_sorted_category_ids(tiny):
    assert tiny.class_names == ["three", "seven"]
    assert tiny.label_to_category_id == {0: 3, 1: 7}
    assert tiny.category_id_to_label == {3: 0, 7: 1}
    assert len(tiny) == 2 and tiny.ids == [1, 2]


def test_item_shapes_dtypes_and_values(tiny):
    image, target = tiny[0]
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    expected = torch.arange(H * W * 3, dtype=torch.uint8).reshape(H, W, 3).permute(2, 0, 1)
    assert torch.equal(image, expected)  # RGB order kept, (3, H, W)
    assert target["image_id"] == 1
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.bool and target["masks"].shape == (3, H, W)  # crowd skipped
    assert target["labels"].tolist() == [1, 0, 1]
    assert target["boxes"].tolist() == [[1, 1, 4, 3], [2, 1, 3, 4], [3, 2, 6, 5]]  # x2 = x + w
    for mask, want in zip(target["masks"], (POLYGON_MASK, UNCOMPRESSED_MASK, COMPRESSED_MASK), strict=True):
        assert torch.equal(mask, torch.from_numpy(want.astype(bool)))


def test_image_without_objects_is_kept_with_empty_targets(tiny):
    image, target = tiny[1]
    assert image.shape == (3, H, W) and bool((image == 9).all())  # grey file converted to RGB
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, H, W) and target["masks"].dtype == torch.bool
    assert target["image_id"] == 2


def test_decode_segmentation_accepts_all_three_formats():
    np.testing.assert_array_equal(decode_segmentation([[1, 1, 4, 1, 4, 3, 1, 3]], H, W), POLYGON_MASK)
    np.testing.assert_array_equal(decode_segmentation(UNCOMPRESSED, H, W), UNCOMPRESSED_MASK)
    rle = compressed(COMPRESSED_MASK)
    np.testing.assert_array_equal(decode_segmentation(rle, H, W), COMPRESSED_MASK)
    np.testing.assert_array_equal(decode_segmentation({**rle, "counts": rle["counts"].encode()}, H, W), COMPRESSED_MASK)
    two = decode_segmentation([[0, 0, 1, 0, 1, 1, 0, 1], [5, 4, 6, 4, 6, 5, 5, 5]], H, W)  # two polygons merged
    assert two.sum() == 2 and two[0, 0] == 1 and two[4, 5] == 1


def test_empty_mask_is_skipped_with_a_warning(tmp_path):
    coco = tiny_coco()
    coco["annotations"].append({"id": 9, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 1, 1],
                                "segmentation": compressed(np.zeros((H, W), np.uint8))})  # fmt: skip
    ds = CocoInstanceDataset(*write(tmp_path, coco))
    with pytest.warns(UserWarning, match=r"skipping annotation 9 of image a\.png .*mask is empty"):
        _, target = ds[0]
    assert len(target["labels"]) == 3


def broken(tmp_path, change) -> tuple:
    coco = copy.deepcopy(tiny_coco())
    change(coco)
    return write(tmp_path, coco)


def set_segmentation(segmentation):
    def change(coco):
        coco["annotations"][0]["segmentation"] = segmentation

    return change


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c["annotations"][0].update(category_id=5),
         r"annotation 1 in .*instances\.json has category_id 5, which is not among the file's categories \[3, 7\]"),
        (set_segmentation([[1, 1, 4, 1]]), r"annotation 1 \(image a\.png\).*polygon with 4 numbers.*at least 6"),
        (set_segmentation([[1, 1, 4, 1, 4, 3, 1]]), r"polygon with 7 numbers \(a polygon needs an even count"),
        (set_segmentation({"size": [W, H], "counts": [30]}), r"RLE of size \[6, 5\] but the image is \[5, 6\]"),
        (set_segmentation({"size": [H, W], "counts": [11, 3]}), r"runs add up to 14 pixels, not H\*W = 30"),
        (set_segmentation({"counts": "abc"}), r"neither a list of polygons nor an RLE dict"),
        (lambda c: c["annotations"][0].pop("segmentation"), r"annotation 1 .* has no 'segmentation'"),
        (lambda c: c["annotations"][0].update(image_id=42), r"refers to image_id 42, not in 'images'"),
        (lambda c: c.pop("categories"), r"is not a COCO instances file: it lacks the key\(s\) \['categories'\]"),
    ],
)  # fmt: skip
def test_bad_annotations_fail_when_opened_with_a_clear_message(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        CocoInstanceDataset(*broken(tmp_path, change))


def test_not_json_and_not_a_dict(tmp_path):
    images, ann_file = write(tmp_path, tiny_coco())
    ann_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['images', 'annotations', 'categories'\]"):
        CocoInstanceDataset(images, ann_file)
    ann_file.write_text("{nope")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CocoInstanceDataset(images, ann_file)


def test_missing_files_name_the_path_and_the_fix(tmp_path):
    images, ann_file = write(tmp_path, tiny_coco())
    with pytest.raises(FileNotFoundError, match=r"annotation file .*nope\.json not found.*data sprites --out DIR"):
        CocoInstanceDataset(images, tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"image folder .*elsewhere not found"):
        CocoInstanceDataset(tmp_path / "elsewhere", ann_file)
    ds = CocoInstanceDataset(images, ann_file)
    (images / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image file .*a\.png \(image id 1 in .*\) not found.*--images"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=r"no 'val' split at .*python -m rtmdet_lesson data sprites --out"):
        sprites_split(tmp_path / "missing", "val")


def test_image_size_mismatch(tmp_path):
    images, ann_file = write(tmp_path, tiny_coco())
    Image.fromarray(np.zeros((W, H, 3), np.uint8)).save(images / "a.png")
    with pytest.raises(ValueError, match=r"a\.png is 6x5 \(HxW\) but .* says 5x6"):
        CocoInstanceDataset(images, ann_file)[0]


def test_sprites_split_items_agree_with_their_masks(tmp_path):
    generate_sprites(tmp_path, seed=1, n_train=2, n_val=6)
    ds = sprites_split(tmp_path, "val")
    assert ds.class_names == list(SPRITE_CLASSES)
    assert ds.label_to_category_id == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}
    assert len(ds) == 6
    seen = 0
    for i in range(len(ds)):
        image, target = ds[i]
        g, h, w = target["masks"].shape
        assert image.shape == (3, h, w) and target["boxes"].shape == (g, 4) and target["labels"].shape == (g,)
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            seen += 1
        assert ((target["labels"] >= 0) & (target["labels"] < 5)).all()
    assert seen > 0
