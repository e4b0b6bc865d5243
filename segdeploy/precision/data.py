"""Calibration and validation image folders, loaded as the manifest's ``input`` section says.

Unreadable or corrupt files are skipped and listed in ``ImageSet.skipped`` (the CLI warns about
each); grey, RGBA, palette and 16-bit images are converted and other sizes resized by ``preprocess``. Images are kept as uint8
at the model's input size and normalised one batch at a time, so large sets stay small in memory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..preprocess import IMAGE_SUFFIXES, find_images, load_image, normalize, resize


@dataclass
class ImageSet:
    """Images of one folder at the model's input size; ``masks`` (class ids) when the folder has them."""

    root: Path
    paths: list[Path]
    images: np.ndarray  # uint8 (N, H, W, 3)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    masks: np.ndarray | None = None  # uint8/uint16 (N, H, W); 255 is "ignore"
    #: sha256 over the relative paths and bytes of every candidate file, skipped ones included.
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, spec: dict, batch: int):
        """Yield float32 NCHW batches normalised as ``spec`` says."""
        for start in range(0, len(self.images), batch):
            yield normalize(self.images[start : start + batch], spec)

    def describe(self) -> dict:
        return {
            "folder": str(self.root),
            "count": len(self.images),
            "skipped": self.skipped,
            "masks": self.masks is not None,
            "files_sha256": self.fingerprint,
        }


def folder_fingerprint(folder: str | os.PathLike, files: list[Path]) -> str:
    """Identifies a set of image files by their relative names and contents (not their times)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def image_folder_files(folder: str | os.PathLike) -> tuple[Path, list[Path], Path | None]:
    """(image root, image files, mask root): a folder with ``images/`` and ``masks/`` has masks."""
    folder = Path(folder)
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return folder / "images", find_images(folder / "images"), folder / "masks"
    return folder, find_images(folder), None


def load_image_set(
    folder: str | os.PathLike,
    spec: dict,
    *,
    purpose: str,
    min_images: int = 1,
    max_images: int | None = None,
    with_masks: bool = True,
    size: tuple[int, int] | None = None,
) -> ImageSet:
    """Load the images under ``folder`` (recursive; jpg/png/bmp) resized to ``size`` (default: the manifest's).

    ``purpose`` ("calibration", "validation") names the set in messages. Raises BadInputError when
    the folder holds no images or fewer than ``min_images`` readable ones.
    """
    root, files, mask_root = image_folder_files(folder)
    if not files:
        raise BadInputError(f"{folder}: no {purpose} images here (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    if max_images is not None:
        files = files[:max_images]
    height, width = size or spec["size"]
    loaded, kept, skipped = [], [], []
    for path in files:
        try:
            loaded.append(resize(load_image(path), height, width))
            kept.append(path)
        except BadInputError as exc:
            skipped.append(str(exc))
    if len(kept) < min_images:
        raise BadInputError(
            f"{folder}: {len(kept)} readable {purpose} image(s), at least {min_images} needed"
            + (f" ({len(skipped)} skipped as unreadable)" if skipped else "")
        )
    masks = _load_masks(root, kept, mask_root, height, width) if with_masks and mask_root else None
    return ImageSet(Path(folder), kept, np.stack(loaded), skipped, masks, folder_fingerprint(folder, sorted(files)))


def _load_masks(image_root: Path, images: list[Path], mask_root: Path, height: int, width: int) -> np.ndarray:
    from PIL import Image

    masks = []
    for image_path in images:
        relative = image_path.relative_to(image_root).with_suffix("")
        candidates = [mask_root / relative.with_suffix(s) for s in (".png", ".bmp")]
        mask_path = next((c for c in candidates if c.is_file()), None)
        if mask_path is None:
            raise BadInputError(f"{image_path}: no mask {candidates[0]} (every image needs one when {mask_root} exists)")
        try:
            with Image.open(mask_path) as mask:
                if mask.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                    raise BadInputError(f"{mask_path}: a mask must be single-channel class ids (mode {mask.mode})")
                # Nearest neighbour: class ids must not be blended.
                mask = mask if mask.size == (width, height) else mask.resize((width, height), Image.NEAREST)
                masks.append(np.asarray(mask).astype(np.int64))
        except OSError as exc:
            raise BadInputError(f"{mask_path}: not a readable mask ({exc})") from None
    return np.stack(masks)
