"""FP16 and INT8 artifacts built into real TensorRT for RTX engines (SM86, ahead of time, no GPU).

The zoo test builds every variant's FP32 export; here the reduced-precision artifacts of three
zoo models (seeded random weights: the accuracy gates are opened, since only what TensorRT makes
of the graphs is under test) and of the trained fixture (gates as shipped) are built. The
FP16 graph's types and the INT8 graph's explicit Q/DQ are what a strongly typed TensorRT builds.
"""

from __future__ import annotations

import pytest
from cli import run_cli
from rtx import NO_RTX, build_rtx, rtx_installed

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not rtx_installed(), reason=NO_RTX)]

#: Gates opened for random weights (near-ties everywhere make argmax agreement meaningless).
OPEN_GATES = ("--min-agreement", "0", "--max-miou-drop", "100", "--no-sensitivity")


def run_ok(*args):
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]


def reduced_precision_artifacts(fp32, image_folders, tmp_path, *gates):
    fp16, int8 = tmp_path / "fp16", tmp_path / "int8"
    run_ok("fp16", fp32, "--val", image_folders["val"], "-o", fp16, *gates)
    run_ok("quantize", fp32, "--calib", image_folders["calib"], "--val", image_folders["val"], "--max-images", "16",
           "-o", int8, *gates)
    return {"fp16": fp16, "int8": int8}


@pytest.mark.parametrize("name", ["deeplabv3plus", "deeplabv3plus_mobilenetv2", "fcdensenet56"])
def test_zoo_fp16_and_int8_artifacts_build(name, image_folders, tmp_path):
    fp32 = tmp_path / "fp32"
    run_ok("export", "--model", name, "--input-size", "64", "64", "-o", fp32)
    for precision, artifact in reduced_precision_artifacts(fp32, image_folders, tmp_path, *OPEN_GATES).items():
        manifest = build_rtx(artifact, tmp_path / f"rtx_{precision}", f"{name} {precision}")
        assert manifest["precision"] == precision and manifest["model"] == name


def test_trained_fixture_fp16_and_int8_artifacts_build(fixture_artifact, image_folders, tmp_path):
    build_rtx(fixture_artifact, tmp_path / "rtx_fp32", "fixture fp32")
    for precision, artifact in reduced_precision_artifacts(fixture_artifact, image_folders, tmp_path).items():
        manifest = build_rtx(artifact, tmp_path / f"rtx_{precision}", f"fixture {precision}")
        assert manifest["precision"] == precision
        assert manifest["reference_onnx"]["sha256"]  # verify finds the FP32 parent on an RTX GPU


def test_trained_fixture_probabilities_and_labels_heads_build(fixture_artifact, tmp_path):
    """The deployment heads as TensorRT for RTX builds them: a uint8 label map straight out of ArgMax -> Cast
    (TensorRT has no int64 output; uint8 as a graph output it takes), float32 probabilities after a Softmax."""
    from segdeploy.head.artifact import apply_head

    for head_name, dtype, shape in (("probabilities", "float32", [-1, 6, -1, -1]), ("labels", "uint8", [-1, -1, -1])):
        artifact = apply_head(fixture_artifact, head_name, output_dir=tmp_path / head_name).output_dir
        manifest = build_rtx(artifact, tmp_path / f"rtx_{head_name}", f"fixture {head_name} head ({dtype} output)")
        (output,) = [t for t in manifest["io"] if t["mode"] == "output"]
        assert (output["name"], output["dtype"], output["shape"]) == (head_name, dtype, shape)
        assert manifest["output"]["head"] == head_name and manifest["output"]["dtype"] == dtype
