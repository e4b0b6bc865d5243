"""Segment image files (or .npy tensors) with an artifact or a user's ONNX file, on any backend.

Predictions come back at each sample's own size. How the prediction output is read is the
manifest's (``outputs.Head``): the argmax over channels for a multi-class output, one channel
thresholded for a binary one, whose probability map (the soft matte) comes back too. A graph with
the ``labels`` deployment head hands back the label map itself ((N, H, W) uint8 or int32): no
argmax on the host, and a binary one has no probability, so no matte.

Inputs: pictures (RGB/BGR/GRAY models; files are read as RGB and ``preprocess.normalize``
converts them), or, for a "tensor" input (depth, multispectral bands), ``.npy`` files holding
one (C, H, W) (or (1, C, H, W)) array already normalised, fed as given.

Input size: ``size`` (``--input-size``) when given, else the manifest's; a dynamic graph whose
manifest records no size runs at each sample's own size, rounded to the manifest's
``size_multiple`` when it is larger than 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .adopt import ModelOptions, artifact_manifest
from .backend.base import make_runner
from .errors import BadInputError
from .fileio import atomic_path
from .outputs import Head
from .preprocess import input_channels, load_image, normalize, resize, takes_pictures
from .visualize import label_image, mask_palette, overlay

TENSOR_SUFFIX = ".npy"


@dataclass
class Prediction:
    """One sample's prediction at the sample's own size."""

    path: Path
    #: uint8 RGB (H, W, 3) for pictures; None for tensor samples (there is no picture to show).
    image: np.ndarray | None
    labels: np.ndarray  # class ids (H, W), uint8 (int32 past 255); 0/1 for a binary head
    head: Head
    #: Binary heads with scores: the foreground probability (H, W) float32, resized bilinearly; else None
    #: (a ``labels`` head outputs no probability).
    probability: np.ndarray | None = None


def open_model(artifact, options: ModelOptions = ModelOptions()) -> tuple[Path, dict]:
    """(ONNX path, manifest) of an artifact folder, an adopted file or a bare ONNX file with ``options``."""
    onnx_path, manifest, _ = artifact_manifest(artifact, options)
    return onnx_path, manifest


def predict_files(artifact, paths, backend: str = "ort", size: tuple[int, int] | None = None,
                  options: ModelOptions = ModelOptions()):  # fmt: skip
    """Yield a :class:`Prediction` for each image (or .npy) file."""
    onnx_path, manifest = open_model(artifact, options)
    head = Head.from_manifest(manifest)
    with make_runner(backend, onnx_path, manifest) as runner:
        for path in map(Path, paths):
            sample = load_sample(path, manifest["input"])
            output = predict_output(runner, manifest, sample, size)
            yield prediction_at(Path(path), sample, output, head)


def segment_files(artifact, images, backend: str = "ort", size: tuple[int, int] | None = None,
                  options: ModelOptions = ModelOptions()):  # fmt: skip
    """Yield ``(path, rgb_image, labels)`` for each image file, labels resized back to the image's size."""
    for p in predict_files(artifact, images, backend, size, options):
        yield p.path, p.image, p.labels


def prediction_at(path: Path, sample: np.ndarray, output: np.ndarray, head: Head) -> Prediction:
    """The :class:`Prediction` of the network's prediction ``output`` for ``sample`` (picture or tensor):
    scores (C, h, w), or the label map (h, w) of a ``labels`` head."""
    shape = sample_shape(sample)
    labels = labels_at(head.labels(output[None])[0], shape)
    probability = None
    if head.kind == "binary" and head.has_scores:
        probability = resize_channels(head.probabilities(output[None])[0], *shape)[0]
    return Prediction(path, sample if sample.dtype == np.uint8 else None, labels, head, probability)


def is_tensor_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == TENSOR_SUFFIX


def load_tensor(path: str | os.PathLike) -> np.ndarray:
    """A float32 (C, H, W) sample from a .npy file holding (C, H, W) or (1, C, H, W)."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
        raise BadInputError(f"{path}: expected one (C, H, W) array of numbers, got {array.dtype} {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def load_sample(path: str | os.PathLike, spec: dict) -> np.ndarray:
    """What the model at ``spec`` (the manifest's ``input``) takes from ``path``: uint8 RGB (H, W, 3) of a
    picture, or float32 (C, H, W) of a .npy tensor; BadInputError when the file does not fit the model."""
    path = Path(path)
    if takes_pictures(spec):
        if is_tensor_file(path):
            raise BadInputError(f"{path}: a .npy tensor, but the model's input {spec.get('name')!r} takes "
                                f"{spec.get('color', 'RGB')} pictures (image files)")  # fmt: skip
        return load_image(path)
    if not is_tensor_file(path):
        raise BadInputError(f"{path}: the model's input {spec.get('name')!r} takes tensors: give .npy files "
                            "holding (C, H, W) arrays, already normalised")  # fmt: skip
    tensor = load_tensor(path)
    check_channels(path, tensor, spec)
    return tensor


def check_channels(path, tensor: np.ndarray, spec: dict) -> None:
    channels = input_channels(spec)
    if channels and tensor.shape[0] != channels:
        raise BadInputError(f"{path}: {tensor.shape[0]} channel(s) (array {list(tensor.shape)}), but the model's "
                            f"input {spec.get('name')!r} takes {channels}")  # fmt: skip


def sample_shape(sample: np.ndarray) -> tuple[int, int]:
    """(H, W) of a uint8 picture (H, W, 3) or a float32 tensor (C, H, W)."""
    return tuple(sample.shape[:2]) if sample.dtype == np.uint8 else tuple(sample.shape[1:])


def network_size(spec: dict, shape: tuple[int, int], size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The size a sample of ``shape`` is fed at: ``size``, else the manifest's, else its own (rounded to
    ``size_multiple``)."""
    if size:
        return int(size[0]), int(size[1])
    recorded = spec.get("size") or [None, None]
    if recorded[0] and recorded[1]:
        return int(recorded[0]), int(recorded[1])
    multiple = int(spec.get("size_multiple") or 1)
    return tuple(max(multiple, int(round(s / multiple)) * multiple) for s in shape)


def predict_output(runner, manifest: dict, sample: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """The network's prediction for one sample (uint8 RGB picture or float32 (C, H, W) tensor), fed at
    ``network_size``: scores (C, h, w), or (h, w) class ids for a ``labels`` head, as the graph gives them.
    The prediction is the manifest's ``output.name``, whatever else the graph returns."""
    spec_in = manifest["input"]
    height, width = network_size(spec_in, sample_shape(sample), size)
    if sample.dtype == np.uint8:
        picture = resize(sample, height, width)
        feed = {spec_in["name"]: normalize(picture, spec_in)}
        if manifest.get("crf"):  # a graph ending in the dense CRF also takes the picture itself
            feed[manifest["crf"]["image_input"]] = picture[None]
    else:
        feed = {spec_in["name"]: resize_channels(sample, height, width)[None]}
    outputs = runner.infer(feed)
    name = manifest["output"]["name"]
    if name not in outputs:
        raise BadInputError(f"the model returns no output {name!r} (it returns {', '.join(outputs)}); "
                            "name the prediction with --output-name")  # fmt: skip
    return outputs[name][0]


def resize_channels(array_chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) float32 resized bilinearly (PIL, as torch's align_corners=False) to (C, height, width)."""
    if array_chw.shape[1:] == (height, width):
        return np.ascontiguousarray(array_chw, dtype=np.float32)
    channels = [Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)) for channel in array_chw]
    return np.stack([np.asarray(c.resize((width, height), Image.BILINEAR)) for c in channels])


def labels_at(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class ids resized (nearest: ids are never blended) to ``shape`` (H, W): uint8, or int32 when an id
    exceeds 255 (a model of more than 255 classes, whose labels head outputs int32)."""
    fits_uint8 = labels.size == 0 or (int(labels.min()) >= 0 and int(labels.max()) <= 255)
    labels = labels.astype(np.uint8 if fits_uint8 else np.int32, copy=False)
    if labels.shape == tuple(shape):
        return labels
    return np.asarray(Image.fromarray(labels).resize((shape[1], shape[0]), Image.NEAREST))


def write_prediction(out_dir: str | os.PathLike, prediction: Prediction) -> dict:
    """Write ``STEM_mask.png`` (palette PNG of class ids; binary: 0 black, 1 white), ``STEM_overlay.png``
    (pictures only) and, for a binary head with scores, ``STEM_matte.png`` (8-bit grey probability); returns
    the paths (None where not written: see :func:`no_matte_reason`)."""
    out_dir = Path(out_dir)
    stem = prediction.path.stem
    binary = prediction.head.kind == "binary"
    palette = mask_palette(binary)
    files = {"mask": out_dir / f"{stem}_mask.png", "overlay": None, "matte": None}
    with atomic_path(files["mask"]) as tmp:
        label_image(prediction.labels, palette).save(tmp, format="PNG")
    if prediction.image is not None:
        files["overlay"] = out_dir / f"{stem}_overlay.png"
        with atomic_path(files["overlay"]) as tmp:
            Image.fromarray(overlay(prediction.image, prediction.labels, binary=binary)).save(tmp, format="PNG")
    if prediction.probability is not None:
        files["matte"] = out_dir / f"{stem}_matte.png"
        with atomic_path(files["matte"]) as tmp:
            Image.fromarray(matte(prediction.probability)).save(tmp, format="PNG")
    return files


def no_matte_reason(head: Head) -> str | None:
    """Why a binary model's prediction has no matte (its graph outputs the label map only); None when it has one
    or is multi-class."""
    if head.kind != "binary" or head.has_scores:
        return None
    return ("no matte: the model outputs labels only (deployment head 'labels'), not the foreground probability; "
            "use an artifact with --head logits or --head probabilities for the matte")


def matte(probability: np.ndarray) -> np.ndarray:
    """uint8 grey (H, W): the probability 0..1 scaled to 0..255."""
    return np.clip(np.asarray(probability, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def write_outputs(out_dir: str | os.PathLike, path: Path, rgb: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """``STEM_mask.png`` (palette PNG of class indices) and ``STEM_overlay.png``, written atomically."""
    files = write_prediction(out_dir, Prediction(Path(path), rgb, labels, Head()))
    return files["mask"], files["overlay"]
