"""The benchmark harness: JSON schema, batch sweep, comparison of runs, plots, Jetson state."""

from __future__ import annotations

import json

import jsonschema
import pytest
from cli import assert_clean_error, export_colour_net, run_cli
from PIL import Image

from segdeploy.bench import jetson
from segdeploy.bench.report import compare_rows
from segdeploy.bench.run import SCHEMA_FILE


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return export_colour_net(tmp_path_factory.mktemp("bench") / "colour", size=32)


@pytest.fixture(scope="module")
def two_runs(artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    paths = []
    for name, extra in (("a.json", ["--warmup", "auto"]), ("b.json", ["--threads", "1"])):
        proc = run_cli("bench", artifact, "--backends", "ort,torch", "--batch", "1,2", "--iterations", "4",
                       "-o", folder / name, "--plots", folder / "plots", *extra)
        assert proc.returncode == 0, proc.stderr
        paths.append(folder / name)
    return paths


def test_bench_json_validates_against_its_schema(two_runs):
    schema = json.loads(SCHEMA_FILE.read_text())
    for path in two_runs:
        report = json.loads(path.read_text())
        jsonschema.validate(report, schema)
        # batch sweep: every backend at every batch size, with one latency sample per iteration
        assert [(r["backend"], r["batch"]) for r in report["results"]] == [("ort", 1), ("ort", 2), ("torch", 1), ("torch", 2)]
        assert all(len(r["samples_ms"]) == r["iterations"] == 4 for r in report["results"])
        assert report["jetson"] is None and all(r["gpu"] is None and r["power"] is None for r in report["results"])


def test_schema_rejects_a_broken_document(two_runs):
    report = json.loads(two_runs[0].read_text())
    del report["results"][0]["median_ms"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))


def test_auto_warmup_runs_until_stable(two_runs):
    report = json.loads(two_runs[0].read_text())
    assert report["settings"]["warmup"] is None
    assert all(r["warmup_runs"] >= 6 and r["warmup_runs"] % 3 == 0 for r in report["results"])


def test_compare_two_real_runs(two_runs):
    proc = run_cli("bench", "--compare", *two_runs, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    expected = compare_rows(*(json.loads(p.read_text()) for p in two_runs))
    assert rows == expected and len(rows) == 4
    for row in rows:
        assert row["speedup"] == pytest.approx(row["before_ms"] / row["after_ms"])
    table = run_cli("bench", "--compare", *two_runs)
    assert table.returncode == 0 and "speed-up" in table.stdout


def test_compare_rejects_a_file_that_is_not_a_bench_result(two_runs, tmp_path):
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"schema": "something else"}))
    proc = run_cli("bench", "--compare", two_runs[0], bogus)
    assert_clean_error(proc, 2, str(bogus), "not a segdeploy benchmark result")


def test_plots_are_real_pngs(two_runs):
    plots = two_runs[0].parent / "plots"
    for name in ("latency.png", "accuracy_vs_latency.png"):
        with Image.open(plots / name) as image:
            assert image.format == "PNG" and image.width > 300


def test_gpu_backend_without_a_gpu_is_a_clean_error(artifact):
    proc = run_cli("bench", artifact, "--backends", "torch-cuda", "--iterations", "1")
    assert_clean_error(proc, 2, "torch-cuda", "needs a CUDA GPU")


def _fake_jetson(root, temperature_mc: int):
    """A sysfs tree laid out as on a Jetson Orin (JetPack 6) with constant rail readings."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64\n")
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text("pmode:0000\n")
    hwmon = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    for channel, (label, mv, ma) in enumerate((("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 5000, 400)), start=1):
        (hwmon / f"in{channel}_label").write_text(label + "\n")
        (hwmon / f"in{channel}_input").write_text(f"{mv}\n")
        (hwmon / f"curr{channel}_input").write_text(f"{ma}\n")
    zone = root / "sys/class/thermal/thermal_zone1"
    zone.mkdir(parents=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text(f"{temperature_mc}\n")
    (zone / "trip_point_0_type").write_text("passive\n")
    (zone / "trip_point_0_temp").write_text("95500\n")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text("918000000\n")
    (gpu / "max_freq").write_text("1300500000\n")
    return root


def test_jetson_readers_on_a_board_tree(tmp_path):
    root = _fake_jetson(tmp_path / "board", temperature_mc=97000)
    assert jetson.power_rails(root) == {"VDD_IN": 6000.0, "VDD_CPU_GPU_CV": 2000.0}
    state = jetson.board_state(root)
    assert state["l4t"] == "R36.4.3" and state["power_mode"] == "0000"
    assert state["throttled"] == ["gpu-thermal"]
    assert state["clocks"]["17000000.gpu"] == {"cur": 918000000, "max": 1300500000}
    assert jetson.board_state(tmp_path / "laptop") is None


def test_bench_reports_energy_per_frame_on_a_jetson_tree(artifact, tmp_path):
    root = _fake_jetson(tmp_path / "board", temperature_mc=40000)
    proc = run_cli("bench", artifact, "--iterations", "5", "--jetson-root", root, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (row,) = report["results"]
    power = row["power"]
    assert power["total_rail"] == "VDD_IN" and power["total_mw"] == pytest.approx(6000.0)
    # 6 W for one frame of median latency: mW × ms / 1000 = mJ
    assert power["energy_mj_per_frame"] == pytest.approx(6000.0 * row["median_ms"] / 1e3)
    assert report["jetson"]["throttled"] == [] and report["jetson"]["l4t"] == "R36.4.3"


def test_dense_crf_is_timed_as_a_post_processing_step(artifact):
    proc = run_cli("bench", artifact, "--iterations", "2", "--crf", "--json")
    assert proc.returncode == 0, proc.stderr
    processing = json.loads(proc.stdout)["processing"]
    assert list(processing) == ["preprocess", "postprocess", "crf"]
    assert processing["crf"]["iterations"] == 3 and processing["crf"]["median_ms"] > processing["postprocess"]["median_ms"]
    jsonschema.validate(json.loads(proc.stdout), json.loads(SCHEMA_FILE.read_text()))
