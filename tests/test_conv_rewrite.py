"""The depthwise matcher and the plugins artifact: small graphs, and the zoo's depthwise and dilated convs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import onnx
import pytest
from conv_graphs import conv_graph, save_conv_graph

from segdeploy.adopt import ModelOptions
from segdeploy.conv.rewrite import DEPTHWISE, SEPARABLE, find_candidates, named_nodes
from segdeploy.errors import BadInputError

NORMALISATION = ModelOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_the_matcher_finds_depthwise_and_separable_and_says_why_not():
    matches = find_candidates(conv_graph())
    found = {(c.layer, c.kind): c for c in matches.candidates}
    assert set(found) == {("dw1", DEPTHWISE), ("dw1", SEPARABLE), ("dw2", DEPTHWISE)}
    assert found["dw1", DEPTHWISE].nodes == ("dw1", "dw1_relu") and found["dw1", DEPTHWISE].activation.kind == "clip"
    block = found["dw1", SEPARABLE]
    assert block.nodes == ("dw1", "dw1_relu", "pw1", "pw1_relu6") and block.out_channels == 16
    assert (block.pointwise_activation.lower, block.pointwise_activation.upper) == (0.0, 6.0)
    dw2 = found["dw2", DEPTHWISE]
    assert dw2.activation.kind == "hardswish" and dw2.geometry.dilations == (2, 2) and dw2.bias == ""
    reasons = {u.node: u.reason for u in matches.unmatched}
    assert set(reasons) == {"grouped", "dilated"}
    assert "2 input channels per group" in reasons["grouped"] and "atrous" in reasons["dilated"]


def test_a_conv_read_twice_keeps_its_activation_out():
    model = conv_graph()
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info("dw1"))  # dw1's output is also read outside
    candidates = {(c.layer, c.kind): c for c in find_candidates(model).candidates}
    assert candidates["dw1", DEPTHWISE].nodes == ("dw1",) and ("dw1", SEPARABLE) not in candidates


def test_unnamed_nodes_get_names():
    model = conv_graph()
    for node in model.graph.node:
        node.name = ""
    names = [n.name for n in named_nodes(model).graph.node]
    assert all(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("mode", ["all", "auto"])
def test_plugins_artifact_passes_the_gate_and_records_the_nodes(tmp_path, mode):
    from segdeploy.conv.artifact import apply_plugins

    source = save_conv_graph(tmp_path)
    result = apply_plugins(source, tmp_path / "out", plugins=mode, atrous="none", input_size=(64, 48), threads=1,
                           options=NORMALISATION, layer_seconds=0.2)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads((Path(__file__).resolve().parents[1] / "segdeploy" / "schemas" /
                                              "manifest.schema.json").read_text()))
    section = manifest["plugins"]
    assert section == result.manifest["plugins"]
    parity = section["parity"]["shapes"]
    assert len(parity) == 2 and all(p["passed"] for p in parity) and parity[0]["shape"] != parity[1]["shape"]
    assert all(p["reference_classes_seen"] > 1 for p in parity)
    model = onnx.load(str(tmp_path / "out" / manifest["onnx"]["file"]))
    ops = sorted(n.op_type for n in model.graph.node if n.domain == "ai.onnx.contrib")
    assert sorted(e["node"] for e in section["replaced"]) == sorted({
        "DepthwiseConv": "dw2:depthwise", "SeparableConv": "dw1:separable"}[op] for op in ops)
    if mode == "all":
        assert ops == ["DepthwiseConv", "SeparableConv"]
    else:  # every option timed, each either replaced or skipped with its reason
        timed = {t["name"] for t in section["timing"]["layers"]}
        assert timed == {"dw1:depthwise", "dw1:separable", "dw2:depthwise"}
        assert timed == {e["node"] for e in section["replaced"]} | {e["node"] for e in section["skipped"]}
        assert section["timing"]["machine"]["threads"] == 1
    assert {u["node"] for u in section["unmatched"]} == {"grouped", "dilated"}


def test_a_failing_gate_writes_nothing(tmp_path, monkeypatch):
    from segdeploy.conv import artifact
    from segdeploy.errors import VerificationError

    source = save_conv_graph(tmp_path)
    # A gate no graph can pass (a negative limit), standing for a rewrite that breaks the graph.
    monkeypatch.setattr(artifact, "FP32_THRESHOLDS", artifact.Thresholds(max_abs_diff=-1.0, min_agreement=1.0, rtol=0.0))
    with pytest.raises(VerificationError, match="nothing written"):
        artifact.apply_plugins(source, tmp_path / "out", plugins="all", atrous="none", options=NORMALISATION)
    assert not (tmp_path / "out").exists()


def test_bad_requests_are_bad_input(tmp_path):
    from segdeploy.conv.artifact import apply_plugins

    source = save_conv_graph(tmp_path)
    with pytest.raises(BadInputError, match="--plugins"):
        apply_plugins(source, tmp_path / "a", plugins="most", options=NORMALISATION)
    with pytest.raises(BadInputError, match="--input-size"):
        apply_plugins(source, tmp_path / "b", plugins="none", atrous="all", options=NORMALISATION)


@pytest.fixture(scope="module")
def mobilenetv2_artifact(tmp_path_factory):
    import torch

    from segdeploy.export import export_model
    from segdeploy.models.batchnorm import calibrated_state_dict

    folder = tmp_path_factory.mktemp("dlv3p_mnv2")
    # BN-calibrated random weights: uncalibrated ones give a nearly constant output, which any graph reproduces
    checkpoint = folder / "calibrated.pt"
    torch.save(calibrated_state_dict("deeplabv3plus_mobilenetv2", (64, 64), num_classes=4), checkpoint)
    export_model("deeplabv3plus_mobilenetv2", folder / "artifact", num_classes=4, input_size=(64, 64),
                 checkpoint=checkpoint)
    return folder / "artifact"


@pytest.mark.slow
def test_a_real_export_is_covered_and_passes_the_gate_with_every_plugin(mobilenetv2_artifact, tmp_path):
    """DeepLabV3+ MobileNetV2 (trt11 target): every depthwise Conv matched and replaced (the separable
    block is CPU only, so a TensorRT target keeps DepthwiseConv), every other grouped or dilated Conv
    is the atrous rewrite's; the rewritten graph passes the gate at two shapes."""
    from segdeploy.conv import atrous
    from segdeploy.conv.artifact import apply_plugins

    model = named_nodes(onnx.load(str(mobilenetv2_artifact / "model.onnx")))
    depthwise_convs = [n.name for n in model.graph.node if n.op_type == "Conv"
                       and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    matches = find_candidates(model)
    assert len(depthwise_convs) == 17 and set(matches.layers()) == set(depthwise_convs)
    split = {c.node for c in atrous.atrous_candidates(model, (64, 64))} | set(atrous.atrous_unmatched(model, (64, 64)))
    assert matches.unmatched and all(u.node in split and "atrous" in u.reason for u in matches.unmatched)

    result = apply_plugins(mobilenetv2_artifact, tmp_path / "out", plugins="all", atrous="none")
    section = result.manifest["plugins"]
    assert sorted(e["layer"] for e in section["replaced"]) == sorted(depthwise_convs)
    assert {e["kind"] for e in section["replaced"]} == {"depthwise"}
    assert any("SeparableConv runs on ONNX Runtime" in e["reason"] for e in section["skipped"])
    shapes = section["parity"]["shapes"]
    assert [p["passed"] for p in shapes] == [True, True] and shapes[0]["shape"] != shapes[1]["shape"]
    assert all(p["reference_classes_seen"] > 1 for p in shapes)  # the output varies: the check means something
    rewritten = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert sum(n.op_type == "DepthwiseConv" for n in rewritten.graph.node) == 17
