"""bench / inspect / infer: the device side, which must run without torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli import assert_clean_error, export_colour_net, run_cli
from PIL import Image

from segdeploy.backend import make_runner
from segdeploy.manifest import resolve_artifact
from segdeploy.parity import sample_images


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return export_colour_net(tmp_path_factory.mktemp("device") / "colour", size=64)


def test_runners_share_one_interface_and_agree(artifact):
    onnx_path, manifest = resolve_artifact(artifact)
    feed = {"images": sample_images((2, 3, 64, 64), manifest["input"])}
    outputs = {}
    for backend in ("torch", "ort"):
        with make_runner(backend, onnx_path, manifest) as runner:
            outputs[backend] = runner.infer(feed)
    assert outputs["torch"].keys() == outputs["ort"].keys() == {"logits"}
    np.testing.assert_allclose(outputs["torch"]["logits"], outputs["ort"]["logits"], atol=1e-4)


def test_bench_compares_backends_side_by_side(artifact, tmp_path):
    out_json = tmp_path / "bench.json"
    proc = run_cli("bench", artifact, "--backends", "torch,ort", "--iterations", "5", "--warmup", "1", "--json", "-o", out_json)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == json.loads(out_json.read_text())
    assert report["schema"] == "segdeploy.bench/1" and report["settings"]["height"] == 64
    assert [r["backend"] for r in report["results"]] == ["torch", "ort"]
    for r in report["results"]:
        assert r["iterations"] == 5 and r["num_classes"] == 3
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_ips"] == pytest.approx(1e3 / r["median_ms"])
        assert r["peak_rss_mb"] > 10
    # torch's process holds the framework: its resident memory is that of a separate process, not ORT's.
    torch_rss, ort_rss = (r["peak_rss_mb"] for r in report["results"])
    assert torch_rss > ort_rss
    assert report["results"][1]["speedup_vs_first"] == pytest.approx(report["results"][0]["median_ms"] / report["results"][1]["median_ms"])
    assert {"preprocess", "postprocess"} <= report["processing"].keys()


def test_bench_table_and_time_budget(artifact):
    proc = run_cli("bench", artifact, "--seconds", "0.5", "--batch", "2", "--input-size", "32", "48")
    assert proc.returncode == 0, proc.stderr
    assert "32x48" in proc.stdout and "│ ort " in proc.stdout and "postprocess" in proc.stdout
    assert "│     2 │" in proc.stdout  # the batch column


def test_device_side_runs_without_torch(artifact, tmp_path):
    image = tmp_path / "scene.png"
    rgb = np.zeros((50, 70, 3), np.uint8)
    rgb[:, :35, 0] = 255  # red left half, blue right half
    rgb[:, 35:, 2] = 255
    Image.fromarray(rgb).save(image)

    bench = run_cli("bench", artifact, "--backends", "ort", "--iterations", "2", "--json", block_torch=True)
    assert bench.returncode == 0, bench.stderr
    inspect = run_cli("inspect", artifact, "--json", block_torch=True)
    assert inspect.returncode == 0 and json.loads(inspect.stdout)["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    infer = run_cli("infer", artifact, image, "--out", tmp_path / "pred", "--json", block_torch=True)
    assert infer.returncode == 0, infer.stderr
    mask = np.asarray(Image.open(json.loads(infer.stdout)[0]["mask"]))
    assert mask.shape == (50, 70)
    # ColourNet: class 0 where red dominates, class 2 where blue does.
    assert (mask[:, :30] == 0).mean() > 0.95 and (mask[:, 40:] == 2).mean() > 0.95
    assert (tmp_path / "pred" / "scene_overlay.png").is_file()


def test_torch_backend_without_torch_says_what_to_install(artifact):
    proc = run_cli("bench", artifact, "--backends", "torch", "--iterations", "1", block_torch=True)
    # The worker subprocess does not inherit the block: it is the parent that must not import torch.
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("infer", artifact, "x.png", "--backend", "torch", block_torch=True)
    assert_clean_error(proc, 2, "torch is not installed", "segdeploy[export]")


def test_kernels_library_is_built_and_callable():
    import segdeploy
    from segdeploy import _native

    assert _native.version() == segdeploy.__version__
    # The flag must say what was built: without CUDA every CUDA entry point answers NOT_BUILT
    # (with CUDA, a machine without a device gets SD_ERROR_CUDA instead).
    not_built = _native.load_library().sd_cuda_set_device(0) == _native.SD_ERROR_NOT_BUILT
    assert _native.built_with_cuda() == (not not_built)
    assert _native.built_with_cuda() or _native.cuda_device_count() == 0


def test_every_command_has_help_with_an_example():
    from segdeploy.cli import COMMANDS

    top = run_cli("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        proc = run_cli(command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "Example" in proc.stdout, f"{command} --help has no example"
