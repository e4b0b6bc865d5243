"""The --target table: opsets, exporters and quantization routes per runtime."""

from __future__ import annotations

import pytest

from segdeploy.errors import BadInputError
from segdeploy.targets import DEFAULT_TARGET, DYNAMO_MIN_OPSET, QUANTIZATION_ROUTES, TARGETS, get_target


def test_issue_targets_are_all_there_and_engines_default_to_the_newest_tensorrt():
    assert set(TARGETS) == {"jetpack5", "jetpack6.0", "jetpack6.2", "trt10", "trt11", "rtx", "cpu"}
    assert DEFAULT_TARGET == "trt11" and get_target(None).name == "trt11"
    assert [TARGETS[name].tensorrt for name in ("jetpack5", "jetpack6.0", "jetpack6.2")] == ["8.5", "8.6", "10.3"]


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
def test_each_target_is_consistent(target):
    assert target.opset <= target.max_opset
    # The dynamo exporter cannot write opset < 18: such targets must use the TorchScript exporter.
    assert target.exporter == ("dynamo" if target.opset >= DYNAMO_MIN_OPSET else "torchscript")
    assert target.exporter_for(target.opset) == target.exporter
    assert target.quantization in QUANTIZATION_ROUTES
    assert (target.runtime == "tensorrt") == (target.quantization == "tensorrt") == (target.tensorrt is not None)


def test_tensorrt_8_targets_stay_at_opset_17_with_torchscript():
    for name in ("jetpack5", "jetpack6.0"):
        assert (TARGETS[name].opset, TARGETS[name].max_opset, TARGETS[name].exporter) == (17, 17, "torchscript")
    assert get_target("cpu").quantization == "ort-cpu"


def test_opset_beyond_a_target_and_unknown_targets_are_bad_input():
    with pytest.raises(BadInputError, match="opset <= 20"):
        get_target("jetpack6.2").exporter_for(21)
    assert get_target("trt11").exporter_for(17) == "torchscript"
    with pytest.raises(BadInputError, match=r"Did you mean jetpack6\.2 or jetpack6\.0\?"):
        get_target("jetpack6")
