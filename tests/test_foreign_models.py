"""The foreign ONNX files (tests/foreign_models.py) and their data give what they claim, run for
real in onnxruntime: names, opsets, dims, heads, the FP16-behind-Cast pattern, accuracy on
held-out scenes, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from foreign_models import ForeignModel, build_binary, build_fp16_cast, build_old_opsets, onnx_outputs

from segdeploy.evaluation.metrics import confusion_matrix, mean_iou, per_class_iou
from segdeploy.fixtures.bands import BAND_SETS, RGB, gray_pixels, scene_bands
from segdeploy.fixtures.train import fixture_input_spec, validation_scenes

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

# name -> (opset, input name, input dims, output names, kind, activation)
CLAIMS = {
    "binary": (13, "input.1", ("N", 3, "H", "W"), ("mask",), "binary", "sigmoid"),
    "binary_logits": (17, "input", ("N", 3, "H", "W"), ("logit",), "binary", "none"),
    "opset11": (11, "input.1", (1, 3, 64, 64), ("output",), "multiclass", "none"),
    "opset12": (12, "x", ("batch", 3, "height", "width"), ("out",), "multiclass", "none"),
    "u2net": (17, "input", ("N", 3, "H", "W"), ("d0", "d1", "d2", "d3"), "binary", "sigmoid"),
    "gray": (17, "image", ("N", 1, "H", "W"), ("output",), "multiclass", "none"),
    "bands4": (17, "input", ("N", 4, "H", "W"), ("logits",), "multiclass", "none"),
    "bands6": (17, "x", ("N", 6, "H", "W"), ("out",), "multiclass", "none"),
    "fp16_cast": (17, "input", ("batch_size", 3, "height", "width"), ("output",), "multiclass", "none"),
}


@pytest.fixture(scope="module")
def held_out():
    """32 held-out scenes: uint8 RGB (32, 64, 64, 3) and class ids (32, 64, 64)."""
    scenes = validation_scenes(32)
    return np.stack([s.image for s in scenes]), np.stack([s.mask for s in scenes])


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _dims(value_info) -> tuple:
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _producers(model: onnx.ModelProto) -> dict:
    return {out: node for node in model.graph.node for out in node.output}


def _torch(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _foreground_iou(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(per_class_iou(confusion_matrix((truth > 0).astype(np.uint8), predicted.astype(np.uint8), 2))[1])


@pytest.mark.parametrize("name", list(CLAIMS))
def test_graph_is_what_its_record_claims_and_runs(foreign_models, name, held_out):
    record: ForeignModel = foreign_models[name]
    opset, input_name, dims, outputs, kind, activation = CLAIMS[name]
    model = onnx.load(str(record.path))
    onnx.checker.check_model(model, full_check=True)
    assert _opset(model) == record.opset == opset
    assert [i.name for i in model.graph.input] == [record.input_name] == [input_name]
    assert _dims(model.graph.input[0]) == record.dims == dims
    assert record.channels == dims[1] and len(record.mean) == len(record.std) == record.channels
    assert tuple(o.name for o in model.graph.output) == record.outputs == outputs
    assert (record.kind, record.activation) == (kind, activation)
    assert record.color == ("RGB" if record.bands == RGB else "GRAY" if record.channels == 1 else "tensor")
    producers = _producers(model)
    assert all((producers[o].op_type == "Sigmoid") == (activation == "sigmoid") for o in outputs)

    images = held_out[0][:1] if not record.dynamic else held_out[0][:3]
    x = record.prepare(images)
    results = onnx_outputs(record.path, x)
    assert len(results) == len(outputs)
    for result, expected in zip(results, _torch(record.model, x)):
        assert result.shape == (len(images), record.classes, 64, 64) and result.dtype == np.float32
        # fp16_cast's weights are rounded to float16; its torch model is the float32 network.
        np.testing.assert_allclose(result, expected, atol=0.05 if name == "fp16_cast" else 1e-4)
        if activation == "sigmoid":
            assert result.min() >= 0 and result.max() <= 1
    if record.dynamic:  # another batch and size than the export's
        (first, *_) = onnx_outputs(record.path, record.prepare(np.stack([s.image for s in validation_scenes(2, 96)]))[:, :, :80])
        assert first.shape == (2, record.classes, 80, 96)


def test_binary_models_segment_held_out_foreground(foreign_models, held_out):
    images, masks = held_out
    binary, logits, u2net = foreign_models["binary"], foreign_models["binary_logits"], foreign_models["u2net"]
    assert binary.trained and binary.class_names == ("background", "foreground")
    (probability,) = onnx_outputs(binary.path, binary.prepare(images))
    (logit,) = onnx_outputs(logits.path, logits.prepare(images))
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-logit)), atol=1e-5)  # the same weights
    iou = _foreground_iou(masks, probability[:, 0] > 0.5)
    assert iou > 85, iou
    assert abs(iou - binary.metrics["iou"]) < 0.5  # the torch network's, recorded when it was trained
    assert np.array_equal(probability[:, 0] > 0.5, logit[:, 0] > 0)

    d0, d1, d2, d3 = onnx_outputs(u2net.path, u2net.prepare(images))
    assert _foreground_iou(masks, d0[:, 0] > 0.5) > 80
    # Side outputs are supervised predictions too, and differ from the fused one.
    assert all(_foreground_iou(masks, d[:, 0] > 0.5) > 70 for d in (d1, d2, d3))
    assert all(np.abs(d - d0).max() > 0.05 for d in (d1, d2, d3))


def test_old_opset_models_are_the_trained_fixture(foreign_models, trained_fixture, held_out):
    images = held_out[0][:4]
    expected = _torch(trained_fixture.model, scene_bands(images))[0]
    from segdeploy.preprocess import normalize

    assert np.array_equal(scene_bands(images), normalize(images, fixture_input_spec(64)))  # prepare == the fixture's input
    fixed, dynamic = foreign_models["opset11"], foreign_models["opset12"]
    (out12,) = onnx_outputs(dynamic.path, dynamic.prepare(images))
    out11 = np.concatenate([onnx_outputs(fixed.path, fixed.prepare(image))[0] for image in images])
    np.testing.assert_allclose(out11, expected, atol=1e-4)
    np.testing.assert_allclose(out12, expected, atol=1e-4)
    assert (out11.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_opset11_breaks_per_channel_qdq_quantization(foreign_models, tmp_path):
    """What the opset-11 file is for: ORT's quantizer keeps opset 11 but writes per-channel
    DequantizeLinear with ``axis`` (opset 13), an invalid model, unless the opset is raised first."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    record = foreign_models["opset11"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{record.input_name: record.prepare(s.image)} for s in validation_scenes(2)])

        def get_next(self):
            return next(self.batches, None)

    quantized = tmp_path / "q.onnx"
    quantize_static(str(record.path), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # fmt: skip
    model = onnx.load(str(quantized))
    assert _opset(model) == 11
    assert any(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute) for n in model.graph.node)
    with pytest.raises(onnx.checker.ValidationError, match="axis"):
        onnx.checker.check_model(model)


@pytest.mark.parametrize("name", ["gray", "bands4", "bands6"])
def test_band_models_segment_held_out_scenes(foreign_models, name, held_out):
    images, masks = held_out
    record = foreign_models[name]
    assert record.bands == BAND_SETS[name] and record.channels == len(BAND_SETS[name]) and record.trained
    assert record.color == ("GRAY" if name == "gray" else "tensor")
    (logits,) = onnx_outputs(record.path, record.prepare(images))
    miou = mean_iou(confusion_matrix(masks, logits.argmax(1), 6))
    assert miou > (50 if name == "gray" else 75), miou
    assert abs(miou - record.metrics["miou"]) < 0.5


def test_tensor_folders_hold_normalised_samples_and_masks(tensor_folders, foreign_models):
    from PIL import Image

    from segdeploy.fixtures.scenes import generate_scenes

    for name, folders in tensor_folders.items():
        channels = len(BAND_SETS[name])
        calib = sorted((folders["calib"] / "images").glob("*.npy"))
        val = sorted((folders["val"] / "images").glob("*.npy"))
        assert len(calib) == 16 and len(val) == 8 and not (folders["calib"] / "masks").exists()
        masks = sorted((folders["val"] / "masks").glob("*.png"))
        assert [p.stem for p in masks] == [p.stem for p in val]
        sample = np.load(val[0])
        assert sample.dtype == np.float32 and sample.shape == (channels, 64, 64)
        scenes = generate_scenes(8, 64, 64, seed=8)
        np.testing.assert_array_equal(sample, foreign_models[name].prepare(scenes[0].image)[0])
        assert np.array_equal(np.asarray(Image.open(masks[3])), scenes[3].mask)
        assert abs(float(sample.mean())) < 1.5 and 0.3 < float(sample.std()) < 3  # normalised
        with np.load(folders["calib_npz"]) as npz:
            assert list(npz.keys()) == ["images"]
            batch = npz["images"]
        assert batch.dtype == np.float32 and batch.shape == (16, channels, 64, 64)
        np.testing.assert_array_equal(batch[5], np.load(calib[5]))
        with np.load(folders["val_npz"]) as npz:
            np.testing.assert_array_equal(npz["images"], np.stack([np.load(p) for p in val]))
        npz_masks = sorted((folders["val_npz"].parent.parent / "masks").glob("*.png"))
        assert [np.asarray(Image.open(p)).tolist() for p in npz_masks] == [np.asarray(Image.open(p)).tolist() for p in masks]


def test_gray_and_binary_folders(gray_folders, binary_folders, foreign_models):
    from PIL import Image

    from segdeploy.fixtures.scenes import generate_scenes

    scenes = generate_scenes(8, 64, 64, seed=8)
    images = sorted((gray_folders["val"] / "images").glob("*.png"))
    assert len(images) == 8 and len(list((gray_folders["calib"] / "images").glob("*.png"))) == 16
    with Image.open(images[2]) as png:
        assert png.mode == "L"
        pixels = np.asarray(png)
    assert np.array_equal(pixels, gray_pixels(scenes[2].image))
    # The grey PNG, normalised with the record's mean/std, is exactly the model's input for the scene.
    gray = foreign_models["gray"]
    x = (pixels.astype(np.float32) * np.float32(gray.scale) - np.float32(gray.mean[0])) / np.float32(gray.std[0])
    np.testing.assert_array_equal(x[None, None], gray.prepare(scenes[2].image))
    assert np.array_equal(np.asarray(Image.open(gray_folders["val"] / "masks" / images[2].name)), scenes[2].mask)

    binary_masks = sorted((binary_folders["val"] / "masks").glob("*.png"))
    assert len(binary_masks) == 8
    assert np.array_equal(np.asarray(Image.open(binary_masks[1])), (scenes[1].mask > 0).astype(np.uint8))


def test_fp16_cast_pattern(foreign_models, held_out):
    from onnx import TensorProto

    record = foreign_models["fp16_cast"]
    model, reference = onnx.load(str(record.path)), onnx.load(str(record.reference))
    assert not record.trained
    types = [t.data_type for t in model.graph.initializer]
    assert TensorProto.FLOAT not in types  # no float32 weight tensor left
    halves = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}
    assert len(halves) == sum(t.data_type == TensorProto.FLOAT for t in reference.graph.initializer) > 30
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for name in halves:  # each read by exactly one Cast to float32, whose output keeps the original name
        (cast,) = consumers[name]
        assert cast.op_type == "Cast" and onnx.helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT
        assert cast.output[0] == name.removesuffix("_fp16") and consumers[cast.output[0]]
    assert {n.op_type for n in model.graph.node} - {"Cast"} == {n.op_type for n in reference.graph.node} - {"Cast"}

    images = held_out[0][:8]
    (out,) = onnx_outputs(record.path, record.prepare(images))
    (ref,) = onnx_outputs(record.reference, record.prepare(images))
    # Sane logits from a random network: unit-scale, labels varying across images, near the float32 file's.
    assert 0.1 < out.std() < 10 and len(np.unique(out.argmax(1))) >= 3
    assert np.abs(out - ref).max() < 0.05
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.97


def test_builders_are_deterministic(foreign_models, tmp_path):
    """Building again (the trained networks from the cache) writes the same bytes."""
    for name, rebuilt in [
        *build_binary(tmp_path / "binary", foreign_models.trained("binary")).items(),
        *build_old_opsets(tmp_path / "opset", foreign_models.fixture()).items(),
        *build_fp16_cast(tmp_path / "fp16").items(),
    ]:
        assert rebuilt.path.read_bytes() == foreign_models[name].path.read_bytes(), name


def test_variant_training_is_reproducible_and_cached(tmp_path):
    from segdeploy.fixtures.train import TrainingConfig
    from segdeploy.fixtures.variants import VARIANTS, Variant, train_variant

    config = TrainingConfig(size=32, train_scenes=16, steps=4, batch=4, width=4)
    for name in ("u2net", "bands6"):
        variant = Variant(name, VARIANTS[name].architecture, VARIANTS[name].bands, VARIANTS[name].classes, config)
        first = train_variant(variant)
        second = train_variant(variant, cache_dir=tmp_path)
        cached = train_variant(variant, cache_dir=tmp_path)
        assert not first.cached and not second.cached and cached.cached
        for key, tensor in first.state_dict.items():
            assert torch.equal(tensor, second.state_dict[key]) and torch.equal(tensor, cached.state_dict[key]), key
        assert cached.metrics == second.metrics
