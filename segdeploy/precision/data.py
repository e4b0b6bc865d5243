"""Calibration and validation sets, loaded as the manifest's ``input`` section says.

Two kinds of input:

* pictures (RGB, BGR or GRAY models): image files (jpg/png/bmp), kept as uint8 RGB at the
  model's input size and normalised one batch at a time (``preprocess.normalize`` converts to
  BGR or grey itself), so large sets stay small in memory. Unreadable or corrupt files are
  skipped and listed in ``ImageSet.skipped`` (the CLI warns about each); grey, RGBA, palette and
  16-bit images are converted and other sizes resized.
* tensors (depth, multispectral, any channel count: ``color`` "tensor"): ``.npy`` files holding
  one sample (C, H, W) or a batch (N, C, H, W) each, or ``.npz`` files whose arrays are such
  samples, already normalised: fed as they are. Their size must be the graph's fixed input size,
  or, for a dynamic graph, the same for all of them.

Either way ``DIR/images`` + ``DIR/masks`` (PNG class ids under the same relative names) give
masks for mIoU.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..preprocess import IMAGE_SUFFIXES, find_images, input_channels, load_image, normalize, resize, takes_pictures

TENSOR_SUFFIXES = (".npy", ".npz")


@dataclass
class ImageSet:
    """Samples of one folder at the model's input size; ``masks`` (class ids) when the folder has them.

    ``images`` is uint8 RGB pictures (N, H, W, 3), normalised per batch, or float32 NCHW tensors
    (``tensors``), fed as they are.
    """

    root: Path
    paths: list[Path]
    images: np.ndarray  # uint8 (N, H, W, 3) pictures or float32 (N, C, H, W) tensors
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    masks: np.ndarray | None = None  # uint8/uint16 (N, H, W); 255 is "ignore"
    #: sha256 over the relative paths and bytes of every candidate file, skipped ones included.
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def tensors(self) -> bool:
        return self.images.dtype != np.uint8

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every sample."""
        return tuple(self.images.shape[2:4] if self.tensors else self.images.shape[1:3])

    def batches(self, spec: dict, batch: int):
        """Yield float32 NCHW batches: pictures normalised as ``spec`` says, tensors as given."""
        for start in range(0, len(self.images), batch):
            chunk = self.images[start : start + batch]
            yield np.ascontiguousarray(chunk, dtype=np.float32) if self.tensors else normalize(chunk, spec)

    def subset(self, count: int) -> ImageSet:
        masks = self.masks[:count] if self.masks is not None else None
        return ImageSet(self.root, self.paths[:count], self.images[:count], masks=masks, fingerprint=self.fingerprint)

    def describe(self) -> dict:
        return {
            "folder": str(self.root),
            "count": len(self.images),
            "kind": "tensors" if self.tensors else "images",
            "skipped": self.skipped,
            "masks": self.masks is not None,
            "files_sha256": self.fingerprint,
        }


def folder_fingerprint(folder: str | os.PathLike, files: list[Path]) -> str:
    """Identifies a set of files by their relative names and contents (not their times)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def find_tensors(folder: str | os.PathLike) -> list[Path]:
    """``.npy``/``.npz`` files under ``folder`` (recursive), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder of .npy/.npz tensors")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in TENSOR_SUFFIXES and p.is_file())


def image_folder_files(folder: str | os.PathLike, spec: dict | None = None) -> tuple[Path, list[Path], Path | None]:
    """(sample root, sample files, mask root): a folder with ``images/`` and ``masks/`` has masks.

    Samples are image files, or ``.npy``/``.npz`` files when ``spec``'s input takes tensors.
    """
    folder = Path(folder)
    find = find_images if spec is None or takes_pictures(spec) else find_tensors
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return folder / "images", find(folder / "images"), folder / "masks"
    return folder, find(folder), None


def what_to_look_for(spec: dict) -> str:
    suffixes = IMAGE_SUFFIXES if takes_pictures(spec) else TENSOR_SUFFIXES
    return ", ".join(suffixes)


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
    """Load the samples under ``folder`` (recursive): pictures resized to ``size`` (default: the
    manifest's), or ``.npy``/``.npz`` tensors for a tensor input (see the module's notes).

    ``purpose`` ("calibration", "validation") names the set in messages. Raises BadInputError when
    the folder holds no samples or fewer than ``min_images`` readable ones.
    """
    root, files, mask_root = image_folder_files(folder, spec)
    if not files:
        raise BadInputError(f"{folder}: no {purpose} {'images' if takes_pictures(spec) else 'tensors'} here "
                            f"(looked for {what_to_look_for(spec)}, recursively)")  # fmt: skip
    if max_images is not None:
        files = files[:max_images]
    if not takes_pictures(spec):
        return _load_tensor_set(folder, root, files, mask_root, spec, purpose, min_images, max_images, with_masks, size)
    height, width = size or spec["size"]
    if not height or not width:
        raise BadInputError(f"{folder}: the model's input size is dynamic; give the size to run {purpose} images at with --size H W")
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


def _tensor_samples(path: Path) -> list[np.ndarray]:
    """The (C, H, W) samples in one .npy/.npz file."""
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = [archive[name] for name in archive.files]
        else:
            arrays = [np.load(path, allow_pickle=False)]
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"{path}: not a readable numpy file ({exc})") from None
    samples = []
    for array in arrays:
        if array.ndim not in (3, 4) or not np.issubdtype(array.dtype, np.number):
            raise BadInputError(f"{path}: expected numeric (C, H, W) or (N, C, H, W) arrays, found {array.dtype} {list(array.shape)}")
        samples.extend(array[None] if array.ndim == 3 else array)
    return samples


def _load_tensor_set(folder, root: Path, files: list[Path], mask_root: Path | None, spec: dict, purpose: str,
                     min_images: int, max_images: int | None, with_masks: bool, size) -> ImageSet:  # fmt: skip
    channels = input_channels(spec)
    wanted = tuple(size) if size else (tuple(spec["size"]) if all(spec.get("size") or [None]) else None)
    samples, paths, per_file = [], [], []
    for path in files:
        found = _tensor_samples(path)
        for sample in found:
            if channels and sample.shape[0] != channels:
                raise BadInputError(f"{path}: a sample has {sample.shape[0]} channel(s); the model's input "
                                    f"{spec.get('name')!r} takes {channels} (arrays are (C, H, W) or (N, C, H, W))")  # fmt: skip
            shape = tuple(sample.shape[1:])
            if wanted and shape != wanted:
                raise BadInputError(f"{path}: a sample is {shape[0]}x{shape[1]}; the model's input is {wanted[0]}x{wanted[1]} "
                                    "(tensors are fed as they are, not resized)")  # fmt: skip
            if not wanted and samples and shape != samples[0].shape[1:]:
                raise BadInputError(f"{path}: a sample is {shape[0]}x{shape[1]}, another {samples[0].shape[1]}x"
                                    f"{samples[0].shape[2]}; {purpose} tensors must all have one size")  # fmt: skip
            samples.append(sample.astype(np.float32))
            paths.append(path)
        per_file.append(len(found))
    if max_images is not None:
        samples, paths = samples[:max_images], paths[:max_images]
    if len(samples) < min_images:
        raise BadInputError(f"{folder}: {len(samples)} {purpose} tensor sample(s), at least {min_images} needed")
    stacked = np.stack(samples)
    if not np.isfinite(stacked).all():
        raise BadInputError(f"{folder}: the {purpose} tensors hold NaN or infinite values")
    masks = None
    if with_masks and mask_root:
        if any(count != 1 for count in per_file):
            raise BadInputError(f"{folder}: with masks/, each tensor file must hold one sample (C, H, W) so it has its mask")
        masks = _load_masks(root, paths, mask_root, *stacked.shape[2:])
    return ImageSet(Path(folder), paths, stacked, [], masks, folder_fingerprint(folder, sorted(files)))


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
