"""Image loading and the input normalisation recorded in every manifest.

Pre-processing lives with the artifact (manifest ``input`` section) so that the device side,
calibration and evaluation all feed a model exactly what it was exported for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import BadInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: ImageNet statistics on 0..1 RGB pixels: what torchvision/timm backbones are trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: What an input's channels hold: colour images (RGB, BGR, GRAY) or tensors given as .npy files.
COLORS = ("RGB", "BGR", "GRAY", "tensor")


def input_spec(height: int, width: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, size_multiple: int = 1,
               color: str = "RGB") -> dict:  # fmt: skip
    """The manifest's ``input`` section: float32 NCHW, ``(pixel * scale - mean) / std`` per channel.

    ``color`` "tensor" is an input that is no picture (depth, multispectral bands): its samples
    come as .npy files already normalised, and mean/std are empty.
    """
    if color not in COLORS:
        raise ValueError(f"color {color!r}: expected one of {', '.join(COLORS)}")
    return {
        "name": "images",
        "dtype": "float32",
        "layout": "NCHW",
        "color": color,
        "channels": len(mean) or None,
        "scale": 1.0 / 255.0,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "size": [int(height), int(width)],
        "size_multiple": int(size_multiple),
        "resize": "bilinear",
    }


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); grey, RGBA, palette and 16-bit images are converted."""
    return decode_image(Path(path), str(path))


def decode_image(source, what: str = "image") -> np.ndarray:
    """``source`` (a path, or an open binary file such as ``io.BytesIO(encoded)``) as uint8 RGB (H, W, 3),
    converted as :func:`load_image` says; ``what`` names it in the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit: scale the full range down to 8 bits rather than clipping.
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            # Grey, palette and alpha images: drop alpha, expand to three channels.
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise BadInputError(f"{what}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{what}: not a readable image ({exc})") from None


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def input_channels(spec: dict) -> int | None:
    """The channel count the model's input takes (None: a tensor input of unrecorded width)."""
    if spec.get("channels"):
        return int(spec["channels"])
    return {"RGB": 3, "BGR": 3, "GRAY": 1}.get(spec.get("color", "RGB"))


def takes_pictures(spec: dict) -> bool:
    """Whether the input is made from image files (else from .npy tensors)."""
    return spec.get("color", "RGB") != "tensor"


def to_model_colors(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 RGB pictures (..., 3) in the channel order the model takes: RGB, BGR or GRAY (..., 1)."""
    color = spec.get("color", "RGB")
    if color == "BGR":
        return images[..., ::-1]
    if color == "GRAY":  # ITU-R 601 luma, as PIL's "L" mode computes it
        luma = images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114
        return np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None]
    if color == "tensor":
        raise BadInputError(f"input {spec.get('name')!r} takes tensors (.npy), not pictures")
    return images


def normalize(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) or (H, W, 3) -> float32 NCHW as the manifest's ``input`` says
    (channels reordered or reduced to grey first when the model takes BGR or GRAY)."""
    if images.ndim == 3:
        images = images[None]
    images = to_model_colors(images, spec)
    x = images.astype(np.float32) * np.float32(spec["scale"])
    x -= np.asarray(spec["mean"], dtype=np.float32)
    x /= np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_files(paths, spec: dict, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load, resize to ``size`` (default: the manifest's) and normalise a batch of image files."""
    height, width = size or spec["size"]
    batch = np.stack([resize(load_image(p), height, width) for p in paths])
    return normalize(batch, spec)


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted for reproducibility."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
