"""Bad input: exit 2, one `error:` line naming the file and the problem, no traceback, no half-written file."""

from __future__ import annotations

import pickle

import pytest
import torch
from cli import assert_clean_error, run_cli
from toy_models import ColourNet


def test_unknown_model_lists_the_known_ones(tmp_path):
    proc = run_cli("export", "--model", "deeplabv3plsu", "-o", tmp_path / "x")
    assert_clean_error(proc, 2, "unknown model 'deeplabv3plsu'", "Did you mean: deeplabv3plus", "Known models:")
    assert not (tmp_path / "x").exists()


def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.pt"
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--checkpoint", missing, "-o", tmp_path / "x")
    assert_clean_error(proc, 2, str(missing), "not found")


def test_corrupt_checkpoint_names_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--checkpoint", corrupt, "-o", tmp_path / "x")
    assert_clean_error(proc, 2, str(corrupt), "not a readable PyTorch checkpoint")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsCodeWhenUnpickled(str(marker))}, evil, _use_new_zipfile_serialization=True,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--checkpoint", evil,
                   "-o", tmp_path / "x")
    assert_clean_error(proc, 2, str(evil), "not a readable PyTorch checkpoint")
    assert not marker.exists()


def test_checkpoint_for_another_number_of_classes_names_keys_and_shapes(tmp_path):
    other = tmp_path / "five_classes.pt"
    torch.save(ColourNet(num_classes=5).state_dict(), other)
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--checkpoint", other, "-o", tmp_path / "x")
    assert_clean_error(proc, 2, str(other), "head.weight: checkpoint (5, 8, 1, 1) vs model (3, 8, 1, 1)", "--num-classes 5")


def test_checkpoint_with_missing_keys_lists_them(tmp_path):
    partial = tmp_path / "partial.pt"
    state = ColourNet(num_classes=3).state_dict()
    del state["down.bias"]
    torch.save({"model": state}, partial)  # wrapped, as training scripts do
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--checkpoint", partial, "-o", tmp_path / "x")
    assert_clean_error(proc, 2, str(partial), "missing keys: down.bias")


def test_input_size_not_a_multiple_of_the_output_stride(tmp_path):
    proc = run_cli("export", "--model", "deeplabv3plus", "--input-size", "100", "64", "-o", tmp_path / "x")
    assert_clean_error(proc, 2, "--input-size 100 64", "multiples of the output stride 16")


def test_failed_export_leaves_no_half_written_artifact(tmp_path):
    out = tmp_path / "x"
    proc = run_cli("export", "--model", "toy_models:unexportable_net", "--num-classes", "3", "--input-size", "32", "32", "-o", out)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "ONNX export of the model failed" in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage protobuf \xff\xff"])
def test_inspect_rejects_a_file_that_is_not_onnx(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    proc = run_cli("inspect", bad)
    assert_clean_error(proc, 2, str(bad))


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from segdeploy.errors import BadInputError
    from segdeploy.onnx_io import load_onnx

    weight = numpy_helper.from_array(np.ones((4,), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    with pytest.raises(BadInputError, match="outside the model's folder"):
        load_onnx(folder / "model.onnx")
    with pytest.raises(BadInputError, match="outside the model's folder"):  # even when only the graph is read
        load_onnx(folder / "model.onnx", load_external_data=False)
    normalisation = ("--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--size", "8", "8")
    for command in (("fp16",), ("quantize", "--calib", folder, "--target", "cpu"), ("lint",), ("inspect",)):
        proc = run_cli(*command, folder / "model.onnx", *(normalisation if command[0] in ("fp16", "quantize") else ()))
        assert_clean_error(proc, 2, "model.onnx", "outside the model's folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "secret.bin"]  # nothing written
    assert [p.name for p in folder.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("command", [["bench"], ["inspect"], ["infer", "--out", "o"]])
def test_missing_artifact_is_named(tmp_path, command):
    missing = tmp_path / "no_such_artifact"
    args = [command[0], missing, *(["img.png"] if command[0] == "infer" else []), *command[1:]]
    proc = run_cli(*args)
    assert_clean_error(proc, 2, str(missing), "no such file or folder")


def test_unknown_option_is_a_usage_error():
    proc = run_cli("export", "--model", "deeplabv3plus", "--no-such-option")
    assert proc.returncode == 2 and "No such option" in proc.stderr and "Traceback" not in proc.stderr
