"""`segdeploy bench --backends triton`: a real Triton server (tests/triton_harness.py) on a repository `segdeploy
serve triton` writes, measured from the client side over HTTP and gRPC, in the bench report format."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import helper
from onnx_graphs import F, seg_graph, with_node
from triton_harness import free_ports, skip_reason, triton_server

from segdeploy.backend.base import make_runner
from segdeploy.bench.run import SCHEMA_FILE
from segdeploy.parity import sample_feed

pytestmark = pytest.mark.slow

SIZE = 32
#: Long enough that 4 clients' requests always meet in one batch, even on a busy machine.
QUEUE_DELAY_US = 20000


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_triton") / "segnet"
    folder.mkdir()
    model = with_node(seg_graph(), helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("probabilities", F, ["batch", 4, "height", "width"]))
    onnx.save(model, folder / "model.onnx")
    proc = run_cli("adopt", folder / "model.onnx", "--size", SIZE, SIZE, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    if (reason := skip_reason()) is not None:
        pytest.skip(reason)
    repo = tmp_path_factory.mktemp("repo") / "models"
    proc = run_cli("serve", "triton", artifact, "-o", repo, "--model-step", "python", "--no-pipeline",
                   "--queue-delay-us", QUEUE_DELAY_US, "--max-batch-size", 8)
    assert proc.returncode == 0, proc.stderr
    with triton_server(repo, timeout=120) as running:
        yield running


def _bench(artifact, url, *extra):
    proc = run_cli("bench", artifact, "--backends", "ort,triton", "--triton-url", url, "--batch", "1,2",
                   "--concurrency", "1,4", "--iterations", "5", "--json", *extra, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    return report


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bench_measures_a_running_server_in_the_report_format(artifact, server, protocol):
    url = f"http://{server.http_url}" if protocol == "http" else f"grpc://{server.grpc_url}"
    report = _bench(artifact, url)
    rows = [(r["backend"], r["batch"], r.get("concurrency")) for r in report["results"]]
    assert rows == [("ort", 1, None), ("ort", 2, None), ("triton", 1, 1), ("triton", 1, 4), ("triton", 2, 1), ("triton", 2, 4)]
    for r in report["results"]:
        if r["backend"] != "triton":
            continue
        assert r["server"] == {"url": url, "model": "segnet"}
        assert r["iterations"] == len(r["samples_ms"]) == 5 * r["concurrency"]
        assert r["p99_ms"] >= r["median_ms"] > 0 and r["throughput_ips"] > 0
        batching = r["batching"]
        # every timed request and each client's warm-up reached the model; executions never exceed requests
        assert batching["images"] == r["batch"] * (r["iterations"] + r["concurrency"] * r["warmup_runs"])
        assert 0 < batching["executions"] <= batching["images"] // r["batch"]
        assert sum(int(size) * count for size, count in batching["executions_by_batch_size"].items()) == batching["images"]
        if r["concurrency"] == 4:  # dynamic batching merged concurrent requests
            assert batching["batches_over_1"] > 0 and batching["mean_batch"] > r["batch"]
    table = run_cli("bench", artifact, "--backends", "triton", "--triton-url", url, "--concurrency", "1,4", "--iterations", "3")
    assert table.returncode == 0, table.stderr
    assert "triton ×4" in table.stdout and "images/s" in table.stdout


def test_the_triton_runner_returns_what_onnx_runtime_computes(artifact, server):
    from segdeploy.manifest import resolve_artifact

    onnx_path, manifest = resolve_artifact(artifact)
    feed = sample_feed((3, 3, SIZE, SIZE), manifest)
    with make_runner("ort", onnx_path, manifest) as ort:
        expected = ort.infer(feed)
    for url in (f"http://{server.http_url}", f"grpc://{server.grpc_url}"):
        with make_runner("triton", onnx_path, manifest, url=url, model="segnet") as remote:
            got = remote.infer(feed)
        assert list(got) == list(expected)
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6)


def test_unreachable_server_unknown_model_and_bad_url_exit_2(artifact, server):
    (port,) = free_ports(1)
    proc = run_cli("bench", artifact, "--backends", "triton", "--triton-url", f"127.0.0.1:{port}", "--iterations", "1")
    assert_clean_error(proc, 2, f"http://127.0.0.1:{port}", "no Triton server answers")
    proc = run_cli("bench", artifact, "--backends", "triton", "--triton-url", f"grpc://{server.grpc_url}",
                   "--triton-model", "nope", "--iterations", "1")
    assert_clean_error(proc, 2, "'nope'")
    proc = run_cli("bench", artifact, "--backends", "triton", "--triton-url", "ftp://host:1", "--iterations", "1")
    assert_clean_error(proc, 2, "ftp://host:1", "expected http://HOST:PORT or grpc://HOST:PORT")
