"""Data set layouts (VOC, Cityscapes, folders) and the per-class metrics of ``segdeploy eval``: no model."""

from __future__ import annotations

import numpy as np
import pytest
from eval_data import iou_loop, write_voc
from PIL import Image

from segdeploy.errors import BadInputError
from segdeploy.evaluation.datasets import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAIN_ID,
    detect_layout,
    open_dataset,
    read_mask,
)
from segdeploy.evaluation.evaluate import scores
from segdeploy.evaluation.metrics import confusion_matrix, per_class_iou
from segdeploy.fixtures.scenes import generate_scenes
from segdeploy.visualize import voc_palette

# ---------------------------------------------------------------------------------------- metrics


def test_per_class_iou_hand_case_with_absent_class():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 3]])
    # class 0: 3 hits; truth 0 = 4 px, pred 0 = 3 px -> IoU 3/4.  class 1: 2 hits; truth 3, pred 3 -> 2/4.
    # class 2: 0 hits; truth 0, pred 1 -> 0/1.  class 3: predicted only on an ignored pixel -> absent.
    confusion = confusion_matrix(truth, pred, 4)
    ious = per_class_iou(confusion)
    assert ious[:3] == pytest.approx([75.0, 50.0, 0.0])
    assert np.isnan(ious[3])
    np.testing.assert_allclose(ious, iou_loop(truth, pred, 4), equal_nan=True)
    block = scores(confusion, ["a", "b", "c", "d"])
    assert block["per_class_iou"] == {"a": 75.0, "b": 50.0, "c": 0.0, "d": None}
    assert block["miou"] == pytest.approx((75 + 50 + 0) / 3, abs=1e-4)
    assert block["pixel_accuracy"] == pytest.approx(100 * 5 / 7, abs=1e-4)
    assert block["class_pixels"] == {"a": 4, "b": 3, "c": 0, "d": 0}


def test_per_class_iou_matches_loop_on_random_maps():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, (40, 50))
    truth[rng.random(truth.shape) < 0.1] = 255
    pred = np.where(rng.random(truth.shape) < 0.7, np.where(truth == 255, 0, truth), rng.integers(0, 6, truth.shape))
    np.testing.assert_allclose(per_class_iou(confusion_matrix(truth, pred, 7)), iou_loop(truth, pred, 7), equal_nan=True)


# ---------------------------------------------------------------------------------------- VOC


def test_voc_split_file_palette_masks_and_ignore(tmp_path):
    scenes = generate_scenes(4, 24, 32, seed=5)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    masks = write_voc(root, scenes, {"val": ["2007_000002", "2007_000000"], "train": ["2007_000001"]})
    assert detect_layout(tmp_path) == "voc"  # found under VOCdevkit/VOC2012
    dataset = open_dataset(tmp_path)
    assert (dataset.layout, dataset.split, dataset.root) == ("voc", "val", root)
    assert [s.id for s in dataset.samples] == ["2007_000002", "2007_000000"]
    rgb, mask = dataset.load(dataset.samples[0])
    assert rgb.shape == (24, 32, 3) and mask.dtype == np.uint8
    assert np.array_equal(mask, masks["2007_000002"]) and (mask == 255).any()
    assert [s.id for s in open_dataset(root, split="train").samples] == ["2007_000001"]
    with pytest.raises(BadInputError, match=r"no split 'test' \(available: train, val\)"):
        open_dataset(root, split="test")


def test_voc_without_split_files_uses_images_that_have_masks(tmp_path):
    write_voc(tmp_path, generate_scenes(3, 16, 16, seed=1))
    (tmp_path / "SegmentationClass" / "2007_000001.png").unlink()  # VOC has many unlabelled JPEGs
    dataset = open_dataset(tmp_path, layout="voc")
    assert [s.id for s in dataset.samples] == ["2007_000000", "2007_000002"]
    assert dataset.split is None and "every image" in dataset.notes[0]


def test_voc_listed_id_without_mask_and_size_mismatch_are_errors(tmp_path):
    write_voc(tmp_path, generate_scenes(2, 16, 16, seed=1), {"val": ["2007_000000", "2007_000001"]})
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "SegmentationClass" / "2007_000000.png")
    dataset = open_dataset(tmp_path)
    with pytest.raises(BadInputError, match=r"2007_000000\.png: mask is 20x16 but its image .* is 16x16"):
        dataset.load(dataset.samples[0])
    (tmp_path / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(BadInputError, match=r"SegmentationClass: no mask 2007_000001\.png"):
        open_dataset(tmp_path)


def test_rgb_colour_masks_map_back_through_the_voc_palette(tmp_path):
    ids = np.array([[0, 1, 2], [15, 255, 20]], np.uint8)
    Image.fromarray(voc_palette()[ids]).save(tmp_path / "colour.png")
    assert np.array_equal(read_mask(tmp_path / "colour.png"), ids)
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(BadInputError, match=r"colour \(7, 7, 7\) that is not in the VOC palette"):
        read_mask(tmp_path / "odd.png")


# ---------------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    label_ids = np.array([[7, 8, 26, 33], [0, 9, 24, 255], [23, 15, 31, 3]], np.uint8)
    expected = np.array([[0, 1, 13, 18], [255, 255, 11, 255], [10, 255, 16, 255]], np.uint8)
    for split, city, name in (("val", "frankfurt", "frankfurt_000000_000294"), ("val", "lindau", "lindau_000001_000019"),
                              ("train", "aachen", "aachen_000000_000019")):
        (tmp_path / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (tmp_path / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((3, 4, 3), 90, np.uint8)).save(tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
        Image.fromarray(label_ids).save(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
        Image.fromarray(np.full((3, 4), 42, np.uint8)).save(tmp_path / "gtFine" / split / city / f"{name}_gtFine_color.png")
    # A labelTrainIds file (cityscapesScripts' createTrainIdLabelImgs) is taken as it is.
    (tmp_path / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png").unlink()
    Image.fromarray(expected).save(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelTrainIds.png")

    dataset = open_dataset(tmp_path)
    assert (dataset.layout, dataset.split, dataset.classes) == ("cityscapes", "val", CITYSCAPES_CLASSES)
    assert [s.id for s in dataset.samples] == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000001_000019"]
    for sample in dataset.samples:
        rgb, mask = dataset.load(sample)
        assert rgb.shape == (3, 4, 3)
        assert np.array_equal(mask, expected), sample.id
    assert len(open_dataset(tmp_path, layout="cityscapes", split="train")) == 1
    assert len(CITYSCAPES_CLASSES) == 19 and sorted(CITYSCAPES_ID_TO_TRAIN_ID.values()) == list(range(19))
    with pytest.raises(BadInputError, match=r"no split 'test' \(available: train, val\)"):
        open_dataset(tmp_path, split="test")
    (tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(BadInputError, match=r"frankfurt: no mask frankfurt_000000_000294_gtFine_labelIds\.png"):
        open_dataset(tmp_path)


# ---------------------------------------------------------------------------------------- folders


def test_plain_folders_and_explicit_image_mask_folders(tmp_path):
    for sub in ("images/a", "masks/a", "gt"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "images" / "a" / "x.jpg")
    Image.fromarray(np.ones((5, 6), np.uint8)).save(tmp_path / "masks" / "a" / "x.png")
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "folders" and [s.id for s in dataset.samples] == ["a/x"]
    assert dataset.load(dataset.samples[0])[1].sum() == 30
    with pytest.raises(BadInputError, match=r"gt: no mask a/x\.png for image"):
        open_dataset(images=tmp_path / "images", masks=tmp_path / "gt")
    with pytest.raises(BadInputError, match="give both --images DIR and --masks DIR"):
        open_dataset(images=tmp_path / "images")


def test_folder_matching_no_layout_is_named(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(BadInputError, match=rf"{tmp_path}: not a data set folder this tool knows"):
        open_dataset(tmp_path)
    with pytest.raises(BadInputError, match=rf"{tmp_path}: not a cityscapes data set folder"):
        open_dataset(tmp_path, layout="cityscapes")
    with pytest.raises(BadInputError, match="no such data folder"):
        open_dataset(tmp_path / "missing")
