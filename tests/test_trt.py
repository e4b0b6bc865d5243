"""The TensorRT layer: build plans and trtexec command lines, engine.json, build/verify without
TensorRT (real here), and - where TensorRT is installed - real builds, runs and verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from cli import REPO_ROOT, TESTS_DIR, assert_clean_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import make_model, qdq_graph, seg_graph, with_node
from rtx import NO_RTX, build_rtx, rtx_installed

from segdeploy.backend.trt.engine_json import check_engine, engine_manifest, read_engine_manifest, resolve_engine, write_engine_manifest
from segdeploy.backend.trt.plan import ENGINE_MANIFEST, ENGINE_NAME, plan_build
from segdeploy.backend.trt.profile import ShapeRange
from segdeploy.backend.trt.releases import jetpack_release, parse_version
from segdeploy.backend.trt.trtexec import format_command, trtexec_args
from segdeploy.backend.trt.verify import find_reference
from segdeploy.errors import BadInputError
from segdeploy.fileio import sha256_file, write_json
from segdeploy.manifest import SCHEMA
from segdeploy.preprocess import input_spec

NO_TENSORRT = "TensorRT is not installed (PyPI's wheels come from NVIDIA's index, unreachable here)"


def tensorrt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- artifacts made without torch

def write_artifact(folder: Path, model: onnx.ModelProto, precision="fp32", target="trt11", parent: Path | None = None,
                   size=(64, 64), multiple=1, classes=4, **input_extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    spec = {**input_spec(*size, size_multiple=multiple), **input_extra}
    manifest = {
        "schema": SCHEMA,
        "model": {"name": "crafted", "args": {}},
        "classes": [f"class_{i}" for i in range(classes)],
        "input": spec,
        "output": {"name": "logits", "dtype": "float32", "layout": "NCHW"},
        "onnx": {"file": "model.onnx", "sha256": sha256_file(folder / "model.onnx"),
                 "opset": model.opset_import[0].version, "precision": precision, "target": target},
    }
    if parent is not None:
        manifest["parent"] = {"onnx": str((parent / "model.onnx").resolve()), "sha256": sha256_file(parent / "model.onnx"),
                              "precision": "fp32"}
    write_json(folder / "manifest.json", manifest)
    return folder


def fp16_graph(dims=("batch", 3, "height", "width")) -> onnx.ModelProto:
    """seg_graph typed FP16 inside, float32 at the edges (what `segdeploy fp16` writes)."""
    base = seg_graph(dims=dims)
    weights = {i.name: numpy_helper.to_array(i).astype(np.float16) for i in base.graph.initializer}
    nodes = [
        helper.make_node("Cast", ["images"], ["x16"], name="to_fp16", to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        helper.make_node("Cast", ["r"], ["logits"], name="to_fp32", to=TensorProto.FLOAT),
    ]
    return make_model(nodes, list(base.graph.input), list(base.graph.output),
                      [numpy_helper.from_array(v, k) for k, v in weights.items()], opset=17)


@pytest.fixture
def artifacts(tmp_path) -> dict[str, Path]:
    fp32 = write_artifact(tmp_path / "fp32", seg_graph(), size=(64, 64), multiple=16)
    return {
        "fp32": fp32,
        "fp16": write_artifact(tmp_path / "fp16", fp16_graph(), "fp16", parent=fp32, size=(64, 64), multiple=16),
        "int8": write_artifact(tmp_path / "int8", qdq_graph(), "int8", parent=fp32, size=(64, 64), multiple=16),
        "static": write_artifact(tmp_path / "static", seg_graph(dims=(1, 3, 64, 64)), size=(64, 64)),
    }


# --------------------------------------------------------------------------- versions

def test_versions_and_jetpack_releases():
    assert parse_version("10.3.0.30") == (10, 3, 0, 30) and parse_version("11") == (11,)
    assert jetpack_release("R36.4.3") == "6.2" and jetpack_release("R36.3.0") == "6.0"
    assert jetpack_release("R35.4.1") == "5.1.2" and jetpack_release("R99.1") is None and jetpack_release(None) is None


# --------------------------------------------------------------------------- trtexec command lines

def args_of(plan) -> list[str]:
    return trtexec_args(plan, trtexec="trtexec")[1:]


TYPING = {
    # target: (flags for fp32, fp16, int8)
    "jetpack5": ([], ["--fp16"], ["--int8"]),
    "jetpack6.0": ([], ["--fp16"], ["--int8"]),
    "jetpack6.2": (["--stronglyTyped"],) * 3,
    "trt10": (["--stronglyTyped"],) * 3,
    "trt11": ([],) * 3,
}


@pytest.mark.parametrize("target", list(TYPING))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trtexec_typing_per_target_and_precision(artifacts, target, precision):
    plan = plan_build(artifacts[precision], target=target, batch="4")
    args = args_of(plan)
    typing = [a for a in args if a in ("--stronglyTyped", "--fp16", "--int8", "--best")]
    assert typing == TYPING[target][("fp32", "fp16", "int8").index(precision)]
    onnx_path = artifacts[precision] / "model.onnx"
    assert args[:2] == [f"--onnx={onnx_path}", f"--saveEngine={artifacts[precision] / ENGINE_NAME}"]
    assert "--minShapes=images:1x3x64x64" in args and "--optShapes=images:4x3x64x64" in args
    assert "--maxShapes=images:4x3x64x64" in args
    assert args[-1] == "--skipInference" and "--noTF32" in args
    cache = next(a for a in args if a.startswith("--timingCacheFile="))
    assert cache.endswith(f"timing-{target}.cache")
    assert not any(a.startswith(("--workspace", "--plugins", "--useDLACore")) for a in args)  # removed or not asked for


def test_trtexec_full_command_lines(artifacts, tmp_path):
    fp16 = artifacts["fp16"]
    plan = plan_build(fp16, target="jetpack6.2", batch="1", workspace_mib=2048, timing_cache=tmp_path / "orin.cache",
                      opt_level=5, dla_core=1, gpu_fallback=True, output=tmp_path / "dla")
    assert trtexec_args(plan, trtexec="/usr/src/tensorrt/bin/trtexec") == [
        "/usr/src/tensorrt/bin/trtexec", f"--onnx={fp16 / 'model.onnx'}", f"--saveEngine={tmp_path / 'dla' / 'model.engine'}",
        "--minShapes=images:1x3x64x64", "--optShapes=images:1x3x64x64", "--maxShapes=images:1x3x64x64",
        "--stronglyTyped", "--noTF32", "--memPoolSize=workspace:2048", "--useDLACore=1", "--allowGPUFallback",
        f"--timingCacheFile={tmp_path / 'orin.cache'}", "--builderOptimizationLevel=5", "--skipInference",
    ]
    plan = plan_build(artifacts["fp32"], target="trt10", min_shape="1x3x32x32", opt_shape="2x3x64x128",
                      max_shape="8x3x128x256", version_compatible=True, hardware_compat=True, timing_cache=tmp_path / "t.cache")
    command = format_command(trtexec_args(plan, trtexec="trtexec"))
    assert command.splitlines()[0] == "trtexec \\"
    assert "    --minShapes=images:1x3x32x32 \\" in command.splitlines()
    assert "--optShapes=images:2x3x64x128" in command and "--maxShapes=images:8x3x128x256" in command
    assert "--versionCompatible" in command and "--hardwareCompatibilityLevel=ampere+" in command
    # A graph with static shapes needs no shape flags.
    static = args_of(plan_build(artifacts["static"], target="jetpack6.0"))
    assert not any("Shapes=" in a for a in static)


def test_trtexec_quotes_awkward_names(tmp_path):
    model = seg_graph()
    for node in model.graph.node:
        node.input[:] = ["input:0" if i == "images" else i for i in node.input]
    model.graph.input[0].name = "input:0"
    folder = write_artifact(tmp_path / "a", model)
    assert "--minShapes='input:0':1x3x64x64" in args_of(plan_build(folder))
    assert " '--minShapes='\"'\"'input:0'\"'\"':1x3x64x64'" in format_command(trtexec_args(plan_build(folder)), multiline=False)


# --------------------------------------------------------------------------- profiles

@pytest.mark.parametrize("options, expected", [
    ({}, ("1x3x64x64", "1x3x64x64", "1x3x64x64")),
    ({"batch": "4"}, ("1x3x64x64", "4x3x64x64", "4x3x64x64")),
    ({"batch": "1:2:8"}, ("1x3x64x64", "2x3x64x64", "8x3x64x64")),
    ({"min_shape": "32x32", "max_shape": "128x256"}, ("1x3x32x32", "1x3x64x64", "1x3x128x256")),
    ({"batch": "2", "min_shape": "32x32", "max_shape": "128x128", "opt_shape": "96x96"}, ("1x3x32x32", "2x3x96x96", "2x3x128x128")),
    ({"opt_shape": "128x64", "batch": "3"}, ("1x3x128x64", "3x3x128x64", "3x3x128x64")),
    ({"opt_shape": "2x3x32x48"}, ("2x3x32x48", "2x3x32x48", "2x3x32x48")),
    ({"min_shape": "96x96", "max_shape": "128x128"}, ("1x3x96x96", "1x3x96x96", "1x3x128x128")),  # opt clamped
])  # fmt: skip
def test_profiles_from_the_manifest_and_options(artifacts, options, expected):
    profile = plan_build(artifacts["fp32"], **options).profile
    as_text = tuple("x".join(map(str, s)) for s in (profile.min, profile.opt, profile.max))
    assert as_text == expected


def test_a_declared_shape_range_in_the_manifest(tmp_path):
    declared = {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 64], "max": [4, 3, 128, 128]}
    folder = write_artifact(tmp_path / "ranged", seg_graph(), shape_range=declared)
    assert plan_build(folder).profile == ShapeRange.from_json(declared)
    assert plan_build(folder, batch="8").profile.max == (8, 3, 128, 128)


@pytest.mark.parametrize("options, message", [
    ({"min_shape": "128x128", "max_shape": "64x64"}, "min <= opt <= max"),
    ({"min_shape": "40x40", "max_shape": "96x96"}, "multiples of the model's size multiple 16"),
    ({"batch": "0"}, "--batch '0'"),
    ({"batch": "4:2:8"}, "MIN <= OPT <= MAX"),
    ({"opt_shape": "1x3x64"}, "expected NxCxHxW"),
    ({"max_shape": "1x4x64x64"}, "C is fixed at 3"),
])  # fmt: skip
def test_bad_profiles_are_clear_errors(artifacts, options, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        plan_build(artifacts["fp32"], **options)


def test_static_dimensions_must_be_met(artifacts):
    with pytest.raises(BadInputError, match="N is fixed at 1"):
        plan_build(artifacts["static"], batch="4")


@pytest.mark.parametrize("capabilities, flag", [("86,89", "--computeCapabilities=86,89"), ("7.5, 12.0", "--computeCapabilities=75,120")])
def test_rtx_command_names_the_gpu_architectures(artifacts, capabilities, flag):
    """TensorRT for RTX: its own tool, the architectures instead of a timing cache; typed by the graph."""
    plan = plan_build(artifacts["int8"], target="rtx", compute_capability=capabilities, batch="2")
    args = trtexec_args(plan)
    assert Path(args[0]).name == "tensorrt_rtx" and flag in args[1:] and args[-1] == "--skipInference"
    assert not any(a.startswith(("--timingCacheFile", "--stronglyTyped", "--int8", "--noTF32")) for a in args)
    assert plan.settings()["compute_capabilities"] == [c.strip() if "." in c else f"{c[:-1]}.{c[-1]}"
                                                       for c in capabilities.split(",")]


# --------------------------------------------------------------------------- options and their releases

@pytest.mark.parametrize("target, options, message", [
    ("jetpack5", {"opt_level": 3}, "--opt-level needs TensorRT 8.6"),
    ("jetpack5", {"version_compatible": True}, "--version-compatible needs TensorRT 8.6"),
    ("jetpack6.2", {"hardware_compat": True}, "Jetson engines are built on the device"),
    ("trt11", {"dla_core": 0}, "DLA cores are on Jetson"),
    ("jetpack6.2", {"gpu_fallback": True}, "give --dla-core N too"),
    ("cpu", {}, "runs on ONNX Runtime"),
    ("trt12", {}, "unknown target 'trt12'"),
    ("trt11", {"compute_capability": "86"}, "naming GPU architectures is TensorRT for RTX's"),
    ("rtx", {"compute_capability": "90"}, "datacenter Hopper"),
    ("rtx", {"compute_capability": ","}, "give one or more"),
    ("rtx", {"dla_core": 0}, "DLA cores are on Jetson"),
    ("rtx", {"hardware_compat": True}, "--hardware-compat needs TensorRT 8.6 or newer; TensorRT for RTX 1.x"),
    ("rtx", {"version_compatible": True}, "--version-compatible needs TensorRT 8.6 or newer; TensorRT for RTX 1.x"),
])  # fmt: skip
def test_options_a_release_lacks(artifacts, target, options, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        plan_build(artifacts["fp16"], target=target, **options)


def test_dla_needs_reduced_precision_and_fixed_shapes(artifacts):
    with pytest.raises(BadInputError, match="DLA computes in FP16 and INT8 only"):
        plan_build(artifacts["fp32"], target="jetpack6.2", dla_core=0)
    with pytest.raises(BadInputError, match="DLA runs fixed shapes"):
        plan_build(artifacts["int8"], target="jetpack6.2", dla_core=0, batch="4")
    plan = plan_build(artifacts["int8"], target="jetpack6.0", dla_core=0, gpu_fallback=True)
    assert plan.precision_flags == ["int8"] and {"--int8", "--useDLACore=0", "--allowGPUFallback"} <= set(args_of(plan))
    assert plan.settings()["dla"] == {"core": 0, "gpu_fallback": True}


def test_the_precision_is_the_artifacts(artifacts):
    with pytest.raises(BadInputError, match="is a fp32 artifact.*segdeploy fp16 writes it"):
        plan_build(artifacts["fp32"], precision="fp16")
    assert plan_build(artifacts["fp16"]).precision == "fp16"
    assert plan_build(artifacts["int8"], precision="int8").precision == "int8"


def test_lint_errors_stop_the_plan(tmp_path):
    unpool = helper.make_node("MaxUnpool", ["logits", "idx"], ["u"], name="decoder_unpool", kernel_shape=[2, 2])
    folder = write_artifact(tmp_path / "segnet", with_node(seg_graph(), unpool))
    with pytest.raises(BadInputError, match=r"decoder_unpool \(MaxUnpool\)"):
        plan_build(folder, target="trt11")


def crf_artifact(tmp_path, dims=(1, 3, 64, 64)) -> Path:
    from segdeploy.crf import append_crf_node

    model = append_crf_node(seg_graph(dims=dims))
    return write_artifact(tmp_path / f"crf{len(set(map(type, dims)))}", model, target="trt11")


def test_plugins_for_custom_nodes(tmp_path, monkeypatch):
    folder = crf_artifact(tmp_path)
    missing = tmp_path / "nowhere" / "libsegdeploy_trt_plugin.so"
    monkeypatch.setenv("SEGDEPLOY_TRT_PLUGIN_LIB", str(missing))
    with pytest.raises(BadInputError, match=f"ai.onnx.contrib::DenseCRF.*{missing}"):
        plan_build(folder)
    library = tmp_path / "lib" / "libsegdeploy_trt_plugin.so"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF stand-in")
    monkeypatch.setenv("SEGDEPLOY_TRT_PLUGIN_LIB", str(library))
    plan = plan_build(folder, target="jetpack6.2")
    assert plan.plugins == [library] and plan.custom_ops == ["ai.onnx.contrib::DenseCRF"]
    assert f"--dynamicPlugins={library}" in args_of(plan)
    with pytest.raises(BadInputError, match="IPluginV3"):
        plan_build(folder, target="jetpack6.0")
    # The CRF's uint8 image input (N, H, W, 3) follows the images input's range.
    dynamic = plan_build(crf_artifact(tmp_path, dims=("batch", 3, "height", "width")), batch="2", max_shape="128x128")
    assert dynamic.extra_profiles == {"image": ShapeRange((1, 64, 64, 3), (2, 64, 64, 3), (2, 128, 128, 3))}
    assert "--maxShapes=images:2x3x128x128,image:2x128x128x3" in args_of(dynamic)


# --------------------------------------------------------------------------- engine.json

RUNTIME = {
    "tensorrt": "10.3.0.30",
    "cuda": {"runtime": "12.6", "driver": "12.6", "driver_version": None},
    "gpu": {"name": "Orin (nvgpu)", "compute_capability": "8.7", "multiprocessors": 16},
    "jetson": {"l4t": "R36.4.3", "jetpack": "6.2"},
}
IO = [
    {"name": "images", "mode": "input", "dtype": "float32", "shape": [-1, 3, -1, -1],
     "profile": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [2, 3, 64, 64]}},
    {"name": "logits", "mode": "output", "dtype": "float32", "shape": [-1, 4, -1, -1]},
]


def fake_engine(plan, runtime=RUNTIME) -> dict:
    """engine.json for a stand-in plan file: everything but the TensorRT build is real."""
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    plan.engine_path.write_bytes(b"stand-in for a serialized TensorRT plan")
    manifest = engine_manifest(plan, runtime, IO, build_seconds=12.5)
    write_engine_manifest(plan.engine_manifest_path, manifest)
    return manifest


def test_engine_manifest_is_written_and_read_back(artifacts, tmp_path):
    plan = plan_build(artifacts["fp16"], target="jetpack6.2", batch="2", output=tmp_path / "engine")
    written = fake_engine(plan)
    engine_path, manifest = resolve_engine(tmp_path / "engine")
    assert engine_path == tmp_path / "engine" / ENGINE_NAME and manifest == written
    assert manifest["schema"] == "segdeploy.engine/1"
    assert manifest["engine"]["sha256"] == sha256_file(engine_path) and manifest["engine"]["build_seconds"] == 12.5
    assert manifest["tensorrt"]["version"] == "10.3.0.30" and manifest["tensorrt"]["strongly_typed"] is True
    assert manifest["tensorrt"]["precision_flags"] == [] and manifest["tensorrt"]["tf32"] is False
    assert manifest["gpu"]["compute_capability"] == "8.7" and manifest["jetson"]["jetpack"] == "6.2"
    assert manifest["cuda"]["runtime"] == "12.6" and manifest["precision"] == "fp16" and manifest["target"] == "jetpack6.2"
    assert manifest["profiles"] == [{"images": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [2, 3, 64, 64]}}]
    assert manifest["io"] == IO and manifest["classes"] == [f"class_{i}" for i in range(4)]
    assert manifest["input"]["mean"] == [0.485, 0.456, 0.406] and manifest["input"]["scale"] == pytest.approx(1 / 255)
    assert manifest["onnx"]["sha256"] == sha256_file(artifacts["fp16"] / "model.onnx")
    # verify finds the FP32 parent from the engine's folder, by a relative path, and checks its sha256.
    assert manifest["reference_onnx"]["sha256"] == sha256_file(artifacts["fp32"] / "model.onnx")
    assert not Path(manifest["reference_onnx"]["path"]).is_absolute()
    assert find_reference(engine_path, manifest).resolve() == (artifacts["fp32"] / "model.onnx").resolve()
    with pytest.raises(BadInputError, match="is not the FP32 ONNX this engine descends from"):
        find_reference(engine_path, manifest, onnx=artifacts["int8"] / "model.onnx")
    assert json.loads((tmp_path / "engine" / ENGINE_MANIFEST).read_text()) == manifest


ENGINE_SCHEMA = json.loads((REPO_ROOT / "segdeploy" / "schemas" / "engine.schema.json").read_text())


def test_engine_manifests_follow_the_schema(artifacts, tmp_path):
    desktop = {**RUNTIME, "gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, "jetson": None}
    plans = {
        "fp32": (plan_build(artifacts["fp32"], output=tmp_path / "fp32"), desktop),
        "fp16": (plan_build(artifacts["fp16"], target="jetpack6.2", batch="2", output=tmp_path / "fp16"), RUNTIME),
        "dla": (plan_build(artifacts["int8"], target="jetpack6.0", dla_core=0, gpu_fallback=True, workspace_mib=512,
                           output=tmp_path / "dla"), {**RUNTIME, "tensorrt": "8.6.2.3"}),
        "portable": (plan_build(artifacts["fp32"], target="trt10", opt_level=5, version_compatible=True, hardware_compat=True,
                                timing_cache=tmp_path / "t.cache", output=tmp_path / "portable"), desktop),
        "rtx": (plan_build(artifacts["int8"], target="rtx", compute_capability="75,120", output=tmp_path / "rtx"),
                {**RUNTIME, "tensorrt": "1.7.1.116", "gpu": None, "cuda": None}),
    }
    for name, (plan, runtime) in plans.items():
        manifest = fake_engine(plan, runtime)
        jsonschema.validate(manifest, ENGINE_SCHEMA)
        assert set(ENGINE_SCHEMA["required"]) <= set(manifest) <= set(ENGINE_SCHEMA["properties"]), name
        assert set(manifest["tensorrt"]) == set(ENGINE_SCHEMA["properties"]["tensorrt"]["required"]), name
    broken = json.loads(json.dumps(manifest))
    broken["tensorrt"]["precision_flags"] = ["best"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ENGINE_SCHEMA)


def test_engine_mismatch_is_refused_before_deserialization(artifacts, tmp_path):
    plan = plan_build(artifacts["fp16"], target="jetpack6.2", output=tmp_path / "e")
    manifest = fake_engine(plan)
    engine = plan.engine_path
    assert check_engine(manifest, engine, RUNTIME) == []
    with pytest.raises(BadInputError, match=r"built with TensorRT 10\.3\.0\.30 and this machine has TensorRT 10\.7\.0"):
        check_engine(manifest, engine, {**RUNTIME, "tensorrt": "10.7.0.23"})
    other_gpu = {**RUNTIME, "gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}}
    with pytest.raises(BadInputError, match=r"built for Orin \(nvgpu\) \(compute capability 8\.7\).*RTX 4090 \(8\.9\)"):
        check_engine(manifest, engine, other_gpu)
    (warning,) = check_engine(manifest, engine, {**RUNTIME, "gpu": {"name": "Orin NX", "compute_capability": "8.7"}})
    assert "same compute capability 8.7" in warning
    # Version-compatible engines run on newer releases; hardware-compatible ones on Ampere and newer.
    portable = json.loads(json.dumps(manifest))
    portable["tensorrt"].update(version_compatible=True, hardware_compatibility_level="ampere+")
    assert check_engine(portable, engine, {**other_gpu, "tensorrt": "10.7.0.23"}) == []
    with pytest.raises(BadInputError, match="needs that release or a newer one"):
        check_engine(portable, engine, {**RUNTIME, "tensorrt": "10.1.0"})
    with pytest.raises(BadInputError, match="rebuild the engine on this GPU"):
        check_engine(portable, engine, {**RUNTIME, "gpu": {"name": "Tesla T4", "compute_capability": "7.5"}})
    # A replaced engine file is caught from its sha256, with no TensorRT at all.
    engine.write_bytes(b"another plan")
    with pytest.raises(BadInputError, match="sha256 differs"):
        check_engine(manifest, engine, None)


def test_engine_manifests_are_validated(tmp_path):
    (tmp_path / ENGINE_MANIFEST).write_text(json.dumps({"schema": "segdeploy.engine/1", "engine": {}}))
    (tmp_path / ENGINE_NAME).write_bytes(b"x")
    with pytest.raises(BadInputError, match="lacks 'tensorrt'"):
        resolve_engine(tmp_path)
    (tmp_path / ENGINE_MANIFEST).write_text("{not json")
    with pytest.raises(BadInputError, match="not a readable engine manifest"):
        read_engine_manifest(tmp_path / ENGINE_MANIFEST)
    (tmp_path / ENGINE_MANIFEST).unlink()
    with pytest.raises(BadInputError, match="no engine.json beside it"):
        resolve_engine(tmp_path / ENGINE_NAME)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no model.engine in this folder"):
        resolve_engine(tmp_path / "empty")


def test_the_trt_backend_is_registered(artifacts):
    from segdeploy.backend.base import BACKENDS, make_runner

    assert BACKENDS["trt"][0] == "segdeploy.backend.trt.runner:TrtRunner"
    with pytest.raises(BadInputError, match="no TensorRT engine; build one with `segdeploy build"):
        make_runner("trt", artifacts["fp32"] / "model.onnx", None)


# --------------------------------------------------------------------------- the CLI without TensorRT

def cli(*args):
    from segdeploy.cli import COMMANDS

    if {"build", "verify"} <= COMMANDS.keys():
        return run_cli(*args)
    # Until the lead registers the commands: the same entry point with them added.
    prelude = ("from segdeploy.cli import COMMANDS, main; COMMANDS.update(build='.build:build', verify='.verify:verify', "
               "lint='.lint:lint_cmd'); main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)])}
    return subprocess.run([sys.executable, "-c", prelude, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed: build would build")
def test_build_without_tensorrt_exits_2_and_prints_trtexec(artifacts, tmp_path):
    proc = cli("build", artifacts["fp16"], "--target", "jetpack6.0", "--batch", "2", "--timing-cache", tmp_path / "t.cache")
    assert_clean_error(proc, 2, "TensorRT is not installed", "python3-libnvinfer")
    assert "/usr/src/tensorrt/bin/trtexec" in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("trtexec \\") and f"--onnx={artifacts['fp16'] / 'model.onnx'} \\" in proc.stdout
    for flag in ("--fp16", "--minShapes=images:1x3x64x64", "--optShapes=images:2x3x64x64", "--maxShapes=images:2x3x64x64",
                 f"--timingCacheFile={tmp_path / 't.cache'}", "--skipInference"):
        assert flag in proc.stdout, flag
    assert not (artifacts["fp16"] / ENGINE_NAME).exists()


def test_print_trtexec_exits_0(artifacts):
    proc = cli("build", artifacts["int8"], "--target", "trt10", "--print-trtexec", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "--stronglyTyped" in result["trtexec"] and "--int8" not in result["trtexec"]
    assert result["command"].startswith(result["trtexec"][0]) and result["engine"].endswith(ENGINE_NAME)
    proc = cli("build", artifacts["fp32"], "--target", "trt11", "--print-trtexec", "--workspace", "1024")
    assert proc.returncode == 0 and "--memPoolSize=workspace:1024" in proc.stdout and "--stronglyTyped" not in proc.stdout


def test_build_errors_are_clean(artifacts, tmp_path):
    assert_clean_error(cli("build", artifacts["fp32"], "--precision", "int8"), 2, "segdeploy quantize")
    assert_clean_error(cli("build", artifacts["fp32"], "--target", "jetpack5", "--opt-level", "3"), 2, "TensorRT 8.6")
    assert_clean_error(cli("build", tmp_path / "nothing"), 2, "no such file or folder")
    assert_clean_error(cli("build", artifacts["fp32"], "--batch", "x"), 2, "--batch 'x'")


def test_verify_checks_the_engine_file_before_needing_tensorrt(artifacts, tmp_path):
    plan = plan_build(artifacts["fp32"], output=tmp_path / "e")
    fake_engine(plan)
    plan.engine_path.write_bytes(b"tampered")
    assert_clean_error(cli("verify", tmp_path / "e"), 2, "sha256 differs")
    assert_clean_error(cli("verify", tmp_path / "nothing"), 2, "no such engine file or folder")
    if not tensorrt_installed():
        fake_engine(plan)
        assert_clean_error(cli("verify", tmp_path / "e"), 2, "TensorRT is not installed")


# --------------------------------------------------------------------------- the CUDA layer (a GPU, no TensorRT needed)

@pytest.mark.gpu
def test_polygraphy_cuda_layer_round_trip():
    from segdeploy.backend.trt.cuda import PolygraphyCuda
    from segdeploy.errors import SegdeployError

    try:
        api = PolygraphyCuda()
        info = api.device_info()
    except SegdeployError as exc:
        pytest.skip(f"no CUDA device: {exc}")
    assert info["name"] and parse_version(info["compute_capability"]) >= (5, 0) and info["multiprocessors"] > 0
    assert parse_version(info["cuda_runtime"]) >= (11,) and parse_version(info["cuda_driver"]) >= parse_version(info["cuda_runtime"])[:1]
    stream = api.create_stream()
    host = np.arange(3 * 64 * 64, dtype=np.float32).reshape(1, 3, 64, 64)
    pointer = api.malloc(host.nbytes)
    back = np.zeros_like(host)
    start, end = api.create_event(), api.create_event()
    try:
        api.record_event(start, stream)
        api.copy_to_device(pointer, host, stream)
        api.copy_to_host(back, pointer, stream)
        api.record_event(end, stream)
        api.synchronize(stream)
        assert np.array_equal(back, host)
        assert api.elapsed_ms(start, end) >= 0.0
    finally:
        api.destroy_event(start)
        api.destroy_event(end)
        api.free(pointer)
        api.destroy_stream(stream)


# --------------------------------------------------------------------------- with TensorRT for RTX (no GPU needed)

@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_builds_real_engines_ahead_of_time(artifacts, tmp_path, precision):
    """The build half of the TensorRT tests, against a real TensorRT: engine + engine.json, for SM86, without a GPU."""
    manifest = build_rtx(artifacts[precision], tmp_path / "e", f"crafted {precision}", "--batch", "1:2:4")
    assert manifest["precision"] == precision and manifest["gpu"] is None
    assert [t["name"] for t in manifest["io"]] == ["images", "logits"]
    assert manifest["io"][0]["profile"] == {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert manifest["tensorrt"]["precision_flags"] == [] and manifest["tensorrt"]["timing_cache"] is None
    # Running it needs an RTX GPU: refused with that reason here (the lent H200, SM90, is not one either).
    proc = cli("verify", tmp_path / "e")
    assert_clean_error(proc, 2, "TensorRT for RTX engines run on an RTX GPU")


def test_rtx_engines_are_refused_on_other_gpus(artifacts, tmp_path):
    """engine.json says which architectures the engine was compiled for; a Hopper card is not among them."""
    plan = plan_build(artifacts["fp32"], target="rtx", compute_capability="86,89", output=tmp_path)
    plan.engine_path.write_bytes(b"engine")
    manifest = engine_manifest(plan, {"tensorrt": "1.7.1.116"}, [], 1.0)
    here = {"tensorrt": "1.7.1.116", "edition": "rtx", "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}}
    with pytest.raises(BadInputError, match="not on datacenter cards such as Hopper"):
        check_engine(manifest, plan.engine_path, here)
    assert check_engine(manifest, plan.engine_path, {**here, "gpu": {"name": "RTX 4090", "compute_capability": "8.9"}}) == []
    with pytest.raises(BadInputError, match="built with TensorRT for RTX and this process runs TensorRT"):
        check_engine(manifest, plan.engine_path, {**here, "edition": "tensorrt"})


@pytest.mark.skipif(not rtx_installed(), reason=NO_RTX)
def test_rtx_build_without_a_gpu_needs_the_architectures(artifacts, tmp_path):
    proc = cli("build", artifacts["fp32"], "--target", "rtx", "-o", tmp_path / "e")
    assert_clean_error(proc, 2, "name the RTX GPUs to build for: --compute-capability")
    assert not (tmp_path / "e" / ENGINE_NAME).exists()


# --------------------------------------------------------------------------- with TensorRT

@pytest.fixture
def tensorrt():
    return pytest.importorskip("tensorrt", reason=NO_TENSORRT)


def native_target(trt) -> str:
    major = parse_version(trt.__version__)[0]
    return {8: "jetpack6.0", 10: "trt10"}.get(major, "trt11")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_run_and_verify_an_fp32_engine(tensorrt, artifacts, tmp_path):
    from segdeploy.backend.onnxrt.runner import OnnxrtRunner, SessionFromOnnx
    from segdeploy.backend.trt.build import build_engine
    from segdeploy.backend.trt.runner import TrtRunner
    from segdeploy.parity import sample_images

    cache = tmp_path / "timing.cache"
    plan = plan_build(artifacts["fp32"], target=native_target(tensorrt), batch="1:2:4", min_shape="32x32",
                      max_shape="128x128", timing_cache=cache, output=tmp_path / "engine")
    messages = []
    manifest = build_engine(plan, progress=messages.append)
    assert messages and cache.is_file() and cache.stat().st_size > 0
    assert manifest["tensorrt"]["version"] == tensorrt.__version__ and manifest["engine"]["build_seconds"] > 0
    assert [t["name"] for t in manifest["io"]] == ["images", "logits"]
    assert manifest["io"][0]["profile"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 64], "max": [4, 3, 128, 128]}
    spec = manifest["input"]
    with TrtRunner.from_engine(tmp_path / "engine") as engine, OnnxrtRunner(SessionFromOnnx(artifacts["fp32"] / "model.onnx")) as ort:
        for shape in [(1, 3, 32, 32), (4, 3, 128, 128), (3, 3, 48, 96)]:
            feed = {"images": sample_images(shape, spec)}
            got, want = engine.infer(feed)["logits"], ort.infer(feed)["logits"]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-3)
        times = engine.time_on_device({"images": sample_images((2, 3, 64, 64), spec)}, 5)
        assert len(times) == 5 and all(t > 0 for t in times) and engine.peak_device_memory_mb() > 0
        with pytest.raises(BadInputError, match="outside the engine's profile"):
            engine.infer({"images": sample_images((8, 3, 64, 64), spec)})
    proc = cli("verify", tmp_path / "engine", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] and len(report["results"]) == 3  # opt, min and max shapes
    # A second build reuses the timing cache; the engine still verifies.
    again = plan_build(artifacts["fp32"], target=native_target(tensorrt), timing_cache=cache, output=tmp_path / "again")
    build_engine(again)
    assert cli("verify", tmp_path / "again").returncode == 0


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_engines_verify_against_fp32(tensorrt, artifacts, tmp_path, precision):
    proc = cli("build", artifacts[precision], "--target", native_target(tensorrt), "--batch", "2", "-o", tmp_path / "e", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["precision"] == precision
    assert manifest["tensorrt"]["strongly_typed"] == (parse_version(tensorrt.__version__)[0] >= 10)
    proc = cli("verify", tmp_path / "e")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_the_printed_trtexec_command_builds_a_loadable_engine(tensorrt, artifacts, tmp_path):
    from segdeploy.backend.trt.trtexec import find_trtexec

    if find_trtexec() is None:
        pytest.skip("trtexec is not installed")
    plan = plan_build(artifacts["fp32"], target=native_target(tensorrt), batch="2", timing_cache=tmp_path / "c", output=tmp_path)
    proc = subprocess.run(trtexec_args(plan), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    from segdeploy.backend.trt.loader import deserialize, engine_io

    engine, _ = deserialize(plan.engine_path.read_bytes())
    assert [t["name"] for t in engine_io(engine)] == ["images", "logits"]


def test_rtx_parser_gets_the_library_name_it_opens_for_plugin_nodes(tmp_path):
    """TensorRT for RTX's wheel ships libtensorrt_rtx.so.1 only; its ONNX parser dlopen()s libtensorrt_rtx.so."""
    from segdeploy.backend.trt.loader import _let_rtx_parser_find_its_library
    from segdeploy.errors import SegdeployError

    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"\x7fELF")
    _let_rtx_parser_find_its_library(tmp_path)
    link = tmp_path / "libtensorrt_rtx.so"
    assert link.is_symlink() and os.readlink(link) == "libtensorrt_rtx.so.1"
    _let_rtx_parser_find_its_library(tmp_path)  # there already: left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libtensorrt_rtx.so", "libtensorrt_rtx.so.1"]
    if os.geteuid() != 0:  # root writes into read-only folders
        link.unlink()
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(SegdeployError, match="ln -s libtensorrt_rtx.so.1"):
                _let_rtx_parser_find_its_library(tmp_path)
        finally:
            tmp_path.chmod(0o755)
