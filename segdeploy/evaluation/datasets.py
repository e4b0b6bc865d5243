"""Labelled segmentation data sets: Pascal VOC, Cityscapes and plain image/mask folders.

* **voc**: ``JPEGImages/ID.jpg`` with ``SegmentationClass/ID.png`` (palette PNG whose pixel
  values are class indices; 255 = ignore, the object borders). ``ImageSets/Segmentation/SPLIT.txt``
  lists the ids when present; without split files, every image that has a mask is used. The
  folder may be the ``VOC2012`` folder itself, or hold ``VOC2012/`` or ``VOCdevkit/VOC2012/``.
* **cityscapes**: ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
  ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``; label ids are mapped to the 19 train ids with the
  official table (everything else is 255, ignored). ``*_gtFine_labelTrainIds.png`` files (already
  train ids) are used where the labelIds file is absent.
* **folders**: ``images/`` and ``masks/`` with the same relative names (masks ``.png`` or ``.bmp``,
  pixel values = class ids, 255 = ignore), or any two folders given as ``images`` and ``masks``.
  For models with a "tensor" input the images are ``.npy`` files, one (C, H, W) array each,
  already normalised (a folder holding both pictures and .npy files is refused).

Masks for one-channel (binary) models (:func:`binary_truth`), decided per mask: a mask whose values
are 0, 1 and maybe 255 with a 1 present holds class ids (1 foreground, 255 ignored); any other mask
is 8-bit grey, saliency style (0/255, anti-aliased edges allowed): foreground where >= 128.

Every mask must exist and have its image's size: evaluation never guesses (a mask resized to a
different image would score nonsense), it stops with a :class:`BadInputError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..preprocess import IMAGE_SUFFIXES, find_images, load_image
from ..visualize import voc_palette

LAYOUTS = ("voc", "cityscapes", "folders")
IGNORE_INDEX = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

#: cityscapesScripts' labels.py: label id -> train id for the 19 evaluated classes; the other
#: ids (unlabeled, ego vehicle, parking, rail track, guard rail, bridge, tunnel, polegroup,
#: caravan, trailer, ...) are ignored.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def cityscapes_label_map() -> np.ndarray:
    """A 256-entry lookup table: ``table[label_id]`` is the train id, 255 for ignored ids."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


@dataclass(frozen=True)
class Sample:
    id: str  # relative name without suffix: "2007_000033", "frankfurt/frankfurt_000000_000294"
    image: Path
    mask: Path
    #: Mask values are Cityscapes label ids that must go through :func:`cityscapes_label_map`.
    cityscapes_ids: bool = False

    @property
    def is_tensor(self) -> bool:
        """The sample is a .npy tensor (C, H, W), not a picture."""
        return self.image.suffix.lower() == ".npy"


@dataclass
class Dataset:
    layout: str
    root: Path
    samples: list[Sample]
    split: str | None = None
    #: Class names the layout itself defines (Cityscapes' 19 train classes); None when it does not.
    classes: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def head(self, limit: int | None) -> Dataset:
        """The first ``limit`` samples (all of them when ``limit`` is None)."""
        if limit is None or limit >= len(self.samples):
            return self
        return Dataset(self.layout, self.root, self.samples[:limit], self.split, self.classes, list(self.notes))

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image (H, W, 3), or float32 (C, H, W) for a .npy sample; class ids (H, W) with
        255 = ignore) of one sample."""
        if sample.is_tensor:
            from ..infer import load_tensor

            image = load_tensor(sample.image)
            height, width = image.shape[1:]
        else:
            image = load_image(sample.image)
            height, width = image.shape[:2]
        mask = read_mask(sample.mask)
        if sample.cityscapes_ids:
            if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
                raise BadInputError(f"{sample.mask}: not a Cityscapes labelIds mask (values outside 0..255)")
            mask = cityscapes_label_map()[mask]
        if mask.shape != (height, width):
            raise BadInputError(
                f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image} is "
                f"{width}x{height} (width x height); masks must match their images"
            )
        return image, mask

    def describe(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "split": self.split, "count": len(self.samples)}


def binary_truth(mask: np.ndarray) -> np.ndarray:
    """0/1 foreground (255 = ignore) of a mask for a one-channel model.

    Values 0, 1 (and 255) with a 1 present: class ids, 255 ignored (VOC-style borders). Anything
    else (0/255 saliency masks, grey anti-aliased ones): foreground where the value is >= 128.
    """
    values = np.unique(mask)
    if np.isin(values, (0, 1, IGNORE_INDEX)).all() and 1 in values:
        return mask.astype(np.uint8)
    return (mask >= 128).astype(np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Class ids of a mask file: palette/grey/16-bit values as they are; RGB colours via the VOC palette."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                mask = np.asarray(image)
                return mask if mask.dtype == np.uint8 else mask.astype(np.int64)
            if image.mode in ("RGB", "RGBA"):
                return _colours_to_ids(np.asarray(image.convert("RGB")), path)
            raise BadInputError(f"{path}: a mask must hold class ids (palette or grey PNG), not mode {image.mode}")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such mask file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable mask ({exc})") from None


def _colours_to_ids(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Colour-coded masks (a palette PNG saved as RGB): map the VOC palette's colours back to indices."""
    palette = voc_palette().astype(np.int64)
    codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    pixels = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, inverse = np.unique(pixels, return_inverse=True)
    lookup = {int(code): index for index, code in enumerate(codes)}  # first index wins: 0 is black
    unknown = [int(v) for v in values if int(v) not in lookup]
    if unknown:
        colour = unknown[0]
        raise BadInputError(
            f"{path}: RGB mask with colour ({colour >> 16}, {(colour >> 8) & 255}, {colour & 255}) that is not "
            "in the VOC palette; save masks as palette or grey PNGs of class ids"
        )
    ids = np.array([lookup[int(v)] for v in values], dtype=np.uint8)
    return ids[inverse.reshape(rgb.shape[:2])]


# --------------------------------------------------------------------------------------------
# Layouts


def _voc_base(root: Path) -> Path | None:
    candidates = [root]
    for parent in (root, root / "VOCdevkit"):
        if parent.is_dir():
            candidates += sorted(p for p in parent.iterdir() if p.is_dir() and p.name.upper().startswith("VOC"))
    for base in candidates:
        if (base / "JPEGImages").is_dir() and (base / "SegmentationClass").is_dir():
            return base
    return None


def _is_cityscapes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


def _is_folders(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


_EXPECTED = {
    "voc": "JPEGImages/ and SegmentationClass/ (Pascal VOC)",
    "cityscapes": "leftImg8bit/ and gtFine/ (Cityscapes)",
    "folders": "images/ and masks/",
}


def detect_layout(root: str | os.PathLike) -> str:
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: no such data folder")
    if _voc_base(root) is not None:
        return "voc"
    if _is_cityscapes(root):
        return "cityscapes"
    if _is_folders(root):
        return "folders"
    raise BadInputError(
        f"{root}: not a data set folder this tool knows: expected {_EXPECTED['voc']}, {_EXPECTED['cityscapes']}, "
        f"or {_EXPECTED['folders']} with the same file names (or give --images DIR --masks DIR)"
    )


def open_dataset(
    root: str | os.PathLike | None = None,
    layout: str | None = None,
    split: str | None = None,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
) -> Dataset:
    """The samples of a data set; ``layout`` None detects it. ``split`` defaults to "val"."""
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise BadInputError("give both --images DIR and --masks DIR, or neither")
        if layout not in (None, "folders"):
            raise BadInputError(f"--images/--masks are plain folders; they do not go with layout {layout!r}")
        return folders_dataset(Path(images), Path(masks), root=Path(root) if root else None)
    if root is None:
        raise BadInputError("no data: give --data DIR (or --images DIR --masks DIR)")
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: no such data folder")
    if layout is None:
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise BadInputError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "voc":
        return voc_dataset(root, split or "val")
    if layout == "cityscapes":
        return cityscapes_dataset(root, split or "val")
    if not _is_folders(root):
        raise BadInputError(f"{root}: not a {layout} data set folder: expected {_EXPECTED['folders']}")
    return folders_dataset(root / "images", root / "masks", root=root)


def _find_with_suffix(folder: Path, stem: str, suffixes) -> Path | None:
    return next((folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()), None)


def voc_dataset(root: Path, split: str = "val") -> Dataset:
    base = _voc_base(root)
    if base is None:
        raise BadInputError(f"{root}: not a voc data set folder: expected {_EXPECTED['voc']}")
    image_dir, mask_dir, sets_dir = base / "JPEGImages", base / "SegmentationClass", base / "ImageSets" / "Segmentation"
    split_file = sets_dir / f"{split}.txt"
    samples: list[Sample] = []
    notes: list[str] = []
    if split_file.is_file():
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        for sample_id in ids:
            image = _find_with_suffix(image_dir, sample_id, (".jpg", ".jpeg", ".png", ".JPG"))
            if image is None:
                raise BadInputError(f"{image_dir}: no image {sample_id}.jpg, listed in {split_file}")
            mask = mask_dir / f"{sample_id}.png"
            if not mask.is_file():
                raise BadInputError(f"{mask_dir}: no mask {sample_id}.png for image {image}")
            samples.append(Sample(sample_id, image, mask))
        used_split: str | None = split
    else:
        available = sorted(p.stem for p in sets_dir.glob("*.txt")) if sets_dir.is_dir() else []
        if available:
            raise BadInputError(f"{sets_dir}: no split {split!r} (available: {', '.join(available)})")
        for image in find_images(image_dir):
            mask = mask_dir / image.relative_to(image_dir).with_suffix(".png")
            if mask.is_file():
                samples.append(Sample(image.relative_to(image_dir).with_suffix("").as_posix(), image, mask))
        used_split = None
        notes.append(f"no {sets_dir / (split + '.txt')}: using every image in {image_dir} that has a mask")
    if not samples:
        raise BadInputError(f"{base}: no images with masks (looked in {image_dir} and {mask_dir})")
    return Dataset("voc", base, samples, used_split, None, notes)


def cityscapes_dataset(root: Path, split: str = "val") -> Dataset:
    if not _is_cityscapes(root):
        raise BadInputError(f"{root}: not a cityscapes data set folder: expected {_EXPECTED['cityscapes']}")
    image_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        available = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
        raise BadInputError(f"{root / 'leftImg8bit'}: no split {split!r} (available: {', '.join(available) or 'none'})")
    samples = []
    suffix = "_leftImg8bit.png"
    for image in sorted(image_dir.rglob(f"*{suffix}")):
        relative = image.relative_to(image_dir)
        prefix = relative.name[: -len(suffix)]
        label_ids = gt_dir / relative.parent / f"{prefix}_gtFine_labelIds.png"
        train_ids = gt_dir / relative.parent / f"{prefix}_gtFine_labelTrainIds.png"
        if label_ids.is_file():
            samples.append(Sample((relative.parent / prefix).as_posix(), image, label_ids, cityscapes_ids=True))
        elif train_ids.is_file():
            samples.append(Sample((relative.parent / prefix).as_posix(), image, train_ids))
        else:
            raise BadInputError(f"{gt_dir / relative.parent}: no mask {label_ids.name} for image {image}")
    if not samples:
        raise BadInputError(f"{image_dir}: no *{suffix} images")
    return Dataset("cityscapes", root, samples, split, CITYSCAPES_CLASSES)


def folders_dataset(image_dir: Path, mask_dir: Path, root: Path | None = None) -> Dataset:
    for folder, what in ((image_dir, "images"), (mask_dir, "masks")):
        if not folder.is_dir():
            raise BadInputError(f"{folder}: no such {what} folder")
    images = find_images(image_dir)
    tensors = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() == ".npy" and p.is_file())
    if images and tensors:
        raise BadInputError(f"{image_dir}: holds both pictures ({images[0].name}) and .npy tensors ({tensors[0].name}); "
                            "keep one kind per folder")  # fmt: skip
    images = images or tensors
    if not images:
        raise BadInputError(f"{image_dir}: no images here (looked for {', '.join(IMAGE_SUFFIXES)} or .npy, recursively)")
    samples = []
    for image in images:
        relative = image.relative_to(image_dir).with_suffix("")
        mask = _find_with_suffix(mask_dir / relative.parent, relative.name, (".png", ".bmp"))
        if mask is None:
            raise BadInputError(f"{mask_dir}: no mask {relative}.png for image {image}")
        samples.append(Sample(relative.as_posix(), image, mask))
    return Dataset("folders", root or image_dir.parent, samples)
