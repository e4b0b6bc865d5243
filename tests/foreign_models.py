"""ONNX files as users bring them: exported by other toolchains, not by segdeploy.

Each builder writes ONNX files into a folder and returns ``ForeignModel`` records (path plus what
a test needs: input name and channels, normalisation, output names, head kind, opset). All are
64x64-class toys, deterministic (seeded; trained networks come from the pytest cache), and fast:

=============  =====  ====================================  ===========  ========================  ==========================
name           opset  input (name, dims)                    outputs      head                      network
=============  =====  ====================================  ===========  ========================  ==========================
binary         13     input.1 (N, 3, H, W)                  mask         binary, Sigmoid in graph  variants "binary", trained
binary_logits  17     input (N, 3, H, W)                    logit        binary, raw logit         the same weights
opset11        11     input.1 (1, 3, 64, 64)                output       6 classes, logits         the trained fixture
opset12        12     x (batch, 3, height, width)           out          6 classes, logits         the trained fixture
u2net          17     input (N, 3, H, W)                    d0 d1 d2 d3  binary, Sigmoid on each   variants "u2net", trained
gray           17     image (N, 1, H, W)                    output       6 classes, logits         variants "gray", trained
bands4         17     input (N, 4, H, W)                    logits       6 classes, logits         variants "bands4", trained
bands6         17     x (N, 6, H, W)                        out          6 classes, logits         variants "bands6", trained
fp16_cast      17     input (batch_size, 3, height, width)  output       6 classes, logits         smp U-Net, random weights
=============  =====  ====================================  ===========  ========================  ==========================

``fp16_cast`` is an smp U-Net (MobileNetV2 encoder, depth 3) with random weights whose BatchNorm
statistics are set on scene images, exported at opset 17 and then rewritten so that every float32
initializer is stored as float16 and read through a ``Cast(to=FLOAT)`` (as some exporters and
compressors write models); ``reference`` is the float32 file it was made from.

The data writers save what non-RGB models are calibrated and evaluated on: normalised float32
``.npy`` tensors, one ``(C, H, W)`` sample per file, or one ``.npz`` of a batch, with class-id PNG
masks beside; and grayscale PNGs.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64
#: The scenes calibration and validation folders hold (as conftest's ``image_folders``: seeds 7 and 8).
CALIB_SEED, VAL_SEED = 7, 8


@dataclass(frozen=True)
class ForeignModel:
    """One ONNX file and how to feed and read it."""

    name: str
    path: Path
    input_name: str
    #: The graph input's dims: ints, or names for dynamic axes.
    dims: tuple
    #: "RGB", "GRAY" (pictures) or "tensor" (multi-band .npy samples, already normalised).
    color: str
    #: How ``prepare`` makes each input channel from a uint8 RGB scene (segdeploy.fixtures.bands.BAND_STATS).
    bands: tuple[str, ...]
    #: Per channel, on 0..1 values (pixel * ``scale``): the input is ``(value - mean) / std``.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    outputs: tuple[str, ...]
    #: "binary" (one channel; ``activation`` "sigmoid" in the graph, or "none": a logit) or "multiclass".
    kind: str
    activation: str
    #: Output channels (1 for binary) and the names of the labels.
    classes: int
    class_names: tuple[str, ...]
    opset: int
    #: Trained on the scenes (else random weights); ``metrics`` of the torch network on held-out
    #: scenes, in percent: ``iou``/``pixel_accuracy`` (binary) or ``miou``/``pixel_accuracy``.
    trained: bool
    metrics: dict = field(default_factory=dict)
    scale: float = 1.0 / 255.0
    #: fp16_cast: the float32 ONNX it was rewritten from.
    reference: Path | None = None
    #: The torch module the ONNX computes (eval mode; for Sigmoid heads it includes the Sigmoid).
    model: object = field(default=None, repr=False, compare=False)

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.dims)

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB scenes (N, H, W, 3) or (H, W, 3) -> the float32 NCHW input this model takes."""
        from segdeploy.fixtures.bands import scene_bands

        return scene_bands(images, self.bands)


# --- export -------------------------------------------------------------------------------------


def export_torchscript(model, path, *, channels: int, opset: int, input_name: str, output_names, dynamic=True,
                       axis_names=("batch", "height", "width"), size: int = SIZE) -> Path:  # fmt: skip
    """Export ``model`` with torch's TorchScript exporter (opset 11-17), as most published ONNX files were."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(1, channels, size, size)
    dims = dict(zip((0, 2, 3), axis_names))
    dynamic_axes = {name: dims for name in (input_name, *output_names)} if dynamic else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True)  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def _record(name, path, variant_or_none, *, input_name, outputs, opset, activation, model, metrics, trained=True,
            bands=None, classes=None, class_names=None, reference=None) -> ForeignModel:  # fmt: skip
    from segdeploy.fixtures.bands import BAND_STATS, RGB

    bands = tuple(bands or (variant_or_none.bands if variant_or_none else RGB))
    classes = classes or (variant_or_none.classes if variant_or_none else 6)
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    dims = tuple(d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim)
    color = "RGB" if bands == RGB else "GRAY" if bands == ("gray",) else "tensor"
    return ForeignModel(
        name=name, path=Path(path), input_name=input_name, dims=dims, color=color, bands=bands,
        mean=tuple(BAND_STATS[b][0] for b in bands), std=tuple(BAND_STATS[b][1] for b in bands),
        outputs=tuple(outputs), kind="binary" if classes == 1 else "multiclass", activation=activation,
        classes=classes, class_names=tuple(class_names or variant_or_none.class_names), opset=opset,
        trained=trained, metrics=dict(metrics), reference=reference, model=model,
    )  # fmt: skip


def build_binary(folder, trained) -> dict[str, ForeignModel]:
    """``binary`` (Sigmoid in the graph, opset 13, ``input.1`` -> ``mask``) and ``binary_logits``
    (the same weights, raw logit, opset 17, ``input`` -> ``logit``) from variants' trained "binary"."""
    from segdeploy.fixtures.variants import Probabilities

    folder = Path(folder)
    variant, probabilities = trained.variant, Probabilities(trained.model).eval()
    sigmoid = export_torchscript(probabilities, folder / "binary_sigmoid_op13.onnx", channels=3, opset=13, input_name="input.1",
                                 output_names=["mask"], axis_names=("N", "H", "W"))  # fmt: skip
    logits = export_torchscript(trained.model, folder / "binary_logit_op17.onnx", channels=3, opset=17, input_name="input",
                                output_names=["logit"], axis_names=("N", "H", "W"))  # fmt: skip
    common = {"metrics": trained.metrics}
    return {
        "binary": _record("binary", sigmoid, variant, input_name="input.1", outputs=["mask"], opset=13, activation="sigmoid",
                          model=probabilities, **common),  # fmt: skip
        "binary_logits": _record("binary_logits", logits, variant, input_name="input", outputs=["logit"], opset=17, activation="none",
                                 model=trained.model, **common),  # fmt: skip
    }


def build_old_opsets(folder, fixture) -> dict[str, ForeignModel]:
    """The trained 6-class fixture (a ``TrainedFixture``) at opset 11 with fixed dims 1x3x64x64
    (``input.1`` -> ``output``) and at opset 12 with dynamic batch/height/width (``x`` -> ``out``)."""
    from segdeploy.fixtures.net import TinySegNet

    folder = Path(folder)
    model = TinySegNet(len(fixture.classes), fixture.config.width)
    model.load_state_dict(fixture.state_dict)
    model.eval()
    fixed = export_torchscript(model, folder / "fixture_op11_fixed.onnx", channels=3, opset=11, input_name="input.1",
                               output_names=["output"], dynamic=False)  # fmt: skip
    dynamic = export_torchscript(model, folder / "fixture_op12_dynamic.onnx", channels=3, opset=12, input_name="x", output_names=["out"])
    metrics = {"miou": fixture.miou, "pixel_accuracy": fixture.pixel_accuracy}
    common = {"activation": "none", "model": model, "metrics": metrics, "classes": len(fixture.classes), "class_names": fixture.classes}
    return {
        "opset11": _record("opset11", fixed, None, input_name="input.1", outputs=["output"], opset=11, **common),
        "opset12": _record("opset12", dynamic, None, input_name="x", outputs=["out"], opset=12, **common),
    }


def build_u2net(folder, trained) -> dict[str, ForeignModel]:
    """``u2net``: variants' trained "u2net" with a Sigmoid on each of d0 (fused), d1, d2, d3; opset 17."""
    from segdeploy.fixtures.variants import Probabilities

    probabilities = Probabilities(trained.model).eval()
    outputs = ["d0", "d1", "d2", "d3"]
    path = export_torchscript(probabilities, Path(folder) / "u2net_like_op17.onnx", channels=3, opset=17, input_name="input",
                              output_names=outputs, axis_names=("N", "H", "W"))  # fmt: skip
    return {"u2net": _record("u2net", path, trained.variant, input_name="input", outputs=outputs, opset=17, activation="sigmoid",
                             model=probabilities, metrics=trained.metrics)}  # fmt: skip


#: Input and output names of the band models, as their (imagined) toolchains named them.
BAND_NAMES = {"gray": ("image", "output"), "bands4": ("input", "logits"), "bands6": ("x", "out")}


def build_band_model(folder, trained) -> dict[str, ForeignModel]:
    """A grayscale or multi-band 6-class model (variants "gray", "bands4", "bands6"), opset 17, dynamic."""
    variant = trained.variant
    input_name, output_name = BAND_NAMES[variant.name]
    path = export_torchscript(trained.model, Path(folder) / f"{variant.name}_op17.onnx", channels=len(variant.bands), opset=17,
                              input_name=input_name, output_names=[output_name], axis_names=("N", "H", "W"))  # fmt: skip
    return {variant.name: _record(variant.name, path, variant, input_name=input_name, outputs=[output_name], opset=17, activation="none",
                                  model=trained.model, metrics=trained.metrics)}  # fmt: skip


def fp16_cast_network(seed: int = 0):
    """The smp U-Net behind ``fp16_cast``: MobileNetV2 encoder (depth 3), random weights from ``seed``,
    BatchNorm statistics from 16 scene images (ImageNet-normalised) so that activations and logits
    are unit-scale and vary across an image; eval mode."""
    import segmentation_models_pytorch as smp
    import torch

    from segdeploy.fixtures.bands import scene_bands
    from segdeploy.fixtures.scenes import generate_scenes
    from segdeploy.models.batchnorm import calibrate_batch_norm

    torch.manual_seed(seed)
    model = smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None, classes=6, encoder_depth=3, decoder_channels=(32, 16, 8))
    images = torch.from_numpy(scene_bands(np.stack([s.image for s in generate_scenes(16, SIZE, SIZE, seed=seed + 99)])))
    return calibrate_batch_norm(model, (SIZE, SIZE), images=images)  # on scenes instead of noise


def cast_weights_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every float32 initializer as float16 (``<name>_fp16``) behind a ``Cast(to=FLOAT)`` whose
    output keeps the original name, so that the consumers are unchanged; returns ``model``."""
    graph = model.graph
    casts, kept = [], []
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}_fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], name=f"{tensor.name}_cast", to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def build_fp16_cast(folder) -> dict[str, ForeignModel]:
    """``fp16_cast`` (see the module docstring) and its float32 ``reference``, opset 17."""
    folder = Path(folder)
    network = fp16_cast_network()
    reference = export_torchscript(network, folder / "smp_unet_fp32_op17.onnx", channels=3, opset=17, input_name="input",
                                   output_names=["output"], axis_names=("batch_size", "height", "width"))  # fmt: skip
    model = cast_weights_to_fp16(onnx.load(str(reference)))
    onnx.checker.check_model(model)
    path = folder / "smp_unet_fp16_cast_op17.onnx"
    onnx.save(model, str(path))
    from segdeploy.fixtures.scenes import CLASSES

    record = _record("fp16_cast", path, None, input_name="input", outputs=["output"], opset=17, activation="none", model=network,
                     metrics={}, trained=False, classes=len(CLASSES), class_names=CLASSES, reference=reference)  # fmt: skip
    return {"fp16_cast": record}


class ForeignModels(Mapping):
    """name -> ``ForeignModel``; each built on first access (training or loading its network from
    ``cache_dir``), under ``root``. ``fixture``: a callable returning the ``TrainedFixture`` (opset11/12)."""

    NAMES = ("binary", "binary_logits", "opset11", "opset12", "u2net", "gray", "bands4", "bands6", "fp16_cast")

    def __init__(self, root, cache_dir=None, fixture=None):
        self.root, self.cache_dir, self._fixture = Path(root), cache_dir, fixture
        self._built: dict[str, ForeignModel] = {}
        self._trained: dict = {}

    def fixture(self):
        """The ``TrainedFixture`` the opset11/12 files are exported from."""
        return self._fixture()

    def trained(self, variant: str):
        """The ``TrainedVariant`` of segdeploy.fixtures.variants ``variant`` (trained once, cached)."""
        from segdeploy.fixtures.variants import train_variant

        if variant not in self._trained:
            self._trained[variant] = train_variant(variant, self.cache_dir)
        return self._trained[variant]

    def __getitem__(self, name: str) -> ForeignModel:
        if name not in self.NAMES:
            raise KeyError(name)
        if name not in self._built:
            folder = self.root / name.split("_")[0]
            if name.startswith("binary"):
                self._built.update(build_binary(folder, self.trained("binary")))
            elif name.startswith("opset"):
                self._built.update(build_old_opsets(folder, self._fixture()))
            elif name == "u2net":
                self._built.update(build_u2net(folder, self.trained("u2net")))
            elif name == "fp16_cast":
                self._built.update(build_fp16_cast(folder))
            else:
                self._built.update(build_band_model(folder, self.trained(name)))
        return self._built[name]

    def __iter__(self):
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


# --- data ---------------------------------------------------------------------------------------


def write_tensor_folder(folder, scenes, bands, masks: bool = True, binary: bool = False) -> Path:
    """``images/scene_NNNN.npy`` (normalised float32 (C, H, W), see variants.scene_bands) and, with
    ``masks``, ``masks/scene_NNNN.png`` (uint8 class ids; 0/1 when ``binary``) under ``folder``."""
    from segdeploy.fixtures.bands import scene_bands

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        np.save(folder / "images" / f"scene_{index:04d}.npy", scene_bands(scene.image, bands)[0])
    if masks:
        _write_masks(folder / "masks", scenes, binary)
    return folder


def write_tensor_batch(path, scenes, bands) -> Path:
    """One ``.npz`` holding one array, ``images``: the normalised float32 batch (N, C, H, W)."""
    from segdeploy.fixtures.bands import scene_bands

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=scene_bands(np.stack([s.image for s in scenes]), bands))
    return path


def write_gray_folder(folder, scenes, masks: bool = True) -> Path:
    """``images/scene_NNNN.png`` as 8-bit grey ("L") PNGs (variants.gray_pixels of the scene) and,
    with ``masks``, ``masks/scene_NNNN.png`` (class ids)."""
    from PIL import Image

    from segdeploy.fixtures.bands import gray_pixels

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        Image.fromarray(gray_pixels(scene.image), mode="L").save(folder / "images" / f"scene_{index:04d}.png")
    if masks:
        _write_masks(folder / "masks", scenes, False)
    return folder


def write_binary_folder(folder, scenes) -> Path:
    """``images/scene_NNNN.png`` (RGB) and ``masks/scene_NNNN.png`` with 0 (background) / 1 (any shape)."""
    from segdeploy.fixtures.scenes import write_scene_folder

    folder = write_scene_folder(folder, scenes, masks=False)
    _write_masks(folder / "masks", scenes, True)
    return folder


def _write_masks(folder: Path, scenes, binary: bool) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        mask = (scene.mask > 0).astype(np.uint8) if binary else scene.mask
        Image.fromarray(mask).save(folder / f"scene_{index:04d}.png")


def write_tensor_folders(root, bands, calib: int = 16, val: int = 8) -> dict[str, Path]:
    """The calibration and validation data of a multi-band model under ``root``:

    - ``calib``: ``images/*.npy`` (``calib`` scenes of seed CALIB_SEED), no masks;
    - ``val``: ``images/*.npy`` and ``masks/*.png`` (``val`` scenes of seed VAL_SEED);
    - ``calib_npz``: the file ``calib_npz/calib.npz``: the calib samples as one (N, C, H, W) batch;
    - ``val_npz``: the file ``val_npz/images/val.npz``: the val samples as one batch, with
      ``val_npz/masks/scene_NNNN.png`` beside it in the batch's order.
    """
    from segdeploy.fixtures.scenes import generate_scenes

    root = Path(root)
    calib_scenes = generate_scenes(calib, SIZE, SIZE, seed=CALIB_SEED)
    val_scenes = generate_scenes(val, SIZE, SIZE, seed=VAL_SEED)
    val_npz = write_tensor_batch(root / "val_npz" / "images" / "val.npz", val_scenes, bands)
    _write_masks(root / "val_npz" / "masks", val_scenes, False)
    return {
        "calib": write_tensor_folder(root / "calib", calib_scenes, bands, masks=False),
        "val": write_tensor_folder(root / "val", val_scenes, bands),
        "calib_npz": write_tensor_batch(root / "calib_npz" / "calib.npz", calib_scenes, bands),
        "val_npz": val_npz,
    }


def write_gray_folders(root, calib: int = 16, val: int = 8) -> dict[str, Path]:
    """``calib`` (grey PNGs in ``images/``, no masks) and ``val`` (``images/`` and ``masks/``) under ``root``."""
    from segdeploy.fixtures.scenes import generate_scenes

    root = Path(root)
    return {
        "calib": write_gray_folder(root / "calib", generate_scenes(calib, SIZE, SIZE, seed=CALIB_SEED), masks=False),
        "val": write_gray_folder(root / "val", generate_scenes(val, SIZE, SIZE, seed=VAL_SEED)),
    }


def onnx_outputs(path: str | os.PathLike, inputs: np.ndarray) -> list[np.ndarray]:
    """Run ``path`` in onnxruntime (CPU) on its one input."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})
