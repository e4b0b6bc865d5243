"""PyTorch -> ONNX with dynamic batch/height/width, checked by the parity gate, plus its manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .backend.onnxrt.runner import OnnxrtRunner, SessionFromOnnx
from .backend.torch.runner import TorchRunner
from .crf import CRFParams, dense_crf
from .crf.onnx_node import append_crf_node
from .errors import BadInputError, SegdeployError, VerificationError
from .fileio import atomic_path, sha256_file
from .head.artifact import build_head, check_head_request
from .lint import errors, lint_onnx, lint_report
from .manifest import MANIFEST_NAME, ONNX_NAME, default_class_names, new_manifest, onnx_file_section, write_manifest
from .models.loading import build_model
from .models.registry import get_spec
from .outputs import Head
from .parity import ParityResult, Thresholds, check_parity, compare_outputs, parity_shapes, sample_feed
from .preprocess import input_spec
from .targets import get_target

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
#: Size multiple assumed for user factories that do not declare ``output_stride``.
DEFAULT_SIZE_MULTIPLE = 32


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: dict
    parity: list[ParityResult] = field(default_factory=list)
    #: What the target's ONNX parser would reject (errors) or mis-handle (warnings).
    lint: list = field(default_factory=list)
    #: With a CRF: ONNX Runtime's CRF graph against PyTorch's logits refined by the CPU kernel.
    crf_parity: ParityResult | None = None
    #: With a deployment head (``--head``): the head graph against the gated scores graph, per shape.
    head_parity: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (all(r.passed for r in self.parity) and (self.crf_parity is None or self.crf_parity.passed)
                and all(p.passed for p in self.head_parity))


def _noop_progress(message: str) -> None:
    pass


def export_model(
    model_name: str,
    output_dir: str | os.PathLike,
    *,
    num_classes: int = 21,
    model_kwargs: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    input_size: tuple[int, int] = (512, 512),
    opset: int | None = None,
    target: str | None = None,
    thresholds: Thresholds = Thresholds(),
    class_names: list[str] | None = None,
    seed: int = 0,
    crf: dict | None = None,
    head: str = "logits",
    fused: bool = False,
    plugins: str = "none",
    progress=_noop_progress,
) -> ExportResult:
    """Export ``model_name`` to ``output_dir/model.onnx`` + ``manifest.json`` and run the parity gate.

    ``target`` (see ``segdeploy.targets``) chooses the opset and so the exporter; ``opset``
    overrides the target's default within what the target's runtime accepts.

    ``crf`` (a dict of ``segdeploy.crf.CRFParams`` fields, ``{}`` for DeepLab's defaults)
    appends a DenseCRF node after the logits: the graph then also takes the uint8 RGB picture
    (input ``image``, N×H×W×3) and returns ``probabilities`` and int32 ``labels``.

    ``head`` (``logits``, ``probabilities`` or ``labels``; ``fused`` for the fused upsample +
    argmax) is appended once the scores graph has passed the gate, and checked against it
    (``segdeploy.head.artifact.build_head``); the manifest's ``head`` section records it.

    ``plugins`` (``auto``, ``all``; default ``none``): once every check has passed, the artifact's
    depthwise convolutions become segdeploy's nodes (``segdeploy.conv.artifact.apply_plugins``,
    measured for ``auto``, gated against the exported graph); the manifest's ``plugins`` section
    records it.

    Raises ``VerificationError`` (after writing both files, the manifest marking the failure)
    when the ONNX graph does not reproduce PyTorch within ``thresholds``.
    """
    profile = get_target(target)
    check_head_request(head, fused, profile)
    if crf is not None and fused:
        raise BadInputError("--crf with --fused: the dense CRF refines the full-resolution scores that the fused upsample + "
                            "argmax never writes; use --crf --head labels (the CRF's own labels) without --fused")
    opset = opset or profile.opset
    exporter = profile.exporter_for(opset)

    if num_classes < 1:
        raise BadInputError(f"--num-classes must be at least 1 (got {num_classes})")
    if class_names is not None and len(class_names) != num_classes:
        raise BadInputError(f"{len(class_names)} class names given for {num_classes} classes")
    spec = None if ":" in model_name else get_spec(model_name)
    args = {"num_classes": num_classes, **(model_kwargs or {})}
    checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None

    progress(f"building {model_name}")
    model = build_model(model_name, args, checkpoint=checkpoint, seed=seed)
    # Input sizes must be multiples of the network's total downsampling: the variant's output
    # stride, or the one asked for with --model-arg output_stride=N.
    multiple = int(args.get("output_stride") or (spec.output_stride if spec else getattr(model, "output_stride", DEFAULT_SIZE_MULTIPLE)))
    height, width = _check_input_size(input_size, multiple, spec)
    # A variant with its own size rule (the unpadded U-Net's) takes sizes that are no multiple of its stride.
    own_rule = spec is not None and spec.valid_input_size is not None
    spec_in = input_spec(height, width, size_multiple=1 if own_rule else multiple)

    output_dir = Path(output_dir)
    onnx_path, manifest_path = output_dir / ONNX_NAME, output_dir / MANIFEST_NAME
    with atomic_path(onnx_path) as tmp_onnx:
        progress(f"exporting to ONNX (opset {opset})")
        started = time.perf_counter()
        output_names, channels = _export_onnx(model, tmp_onnx, height, width, opset, exporter)
        export_seconds = time.perf_counter() - started
        # The first output is the prediction; one channel is a binary logit head (threshold 0).
        prediction, scores_head = output_names[0], Head.detect(channels)

        progress("checking parity with PyTorch at two shapes")
        shapes = parity_shapes(height, width, multiple, spec.valid_input_size if spec else None)
        results = _run_parity(model, tmp_onnx, output_names, shapes, spec_in, thresholds, prediction, scores_head)
        output = {"name": prediction, "dtype": "float32", "layout": "NCHW", "all": output_names, **scores_head.to_manifest()}
        crf_section = None
        if crf is not None:
            # The CRF reads the logits and is the head: its probabilities (logits, probabilities) or its labels alone.
            progress("appending the dense CRF and checking it")
            crf_section = _append_crf(model, tmp_onnx, spec_in, crf, shapes[0], thresholds, labels_only=head == "labels")
            output = crf_output_section(head == "labels", num_classes)
        head_section, head_parity = None, []
        if head != "logits" and crf is None and all(r.passed for r in results):
            manifest_so_far = {"input": spec_in, "output": output, "classes": class_names or default_class_names(num_classes),
                               "model": {"output_stride": multiple}}
            with tempfile.TemporaryDirectory(prefix=".segdeploy-head-", dir=tmp_onnx.parent) as work:
                built = build_head(tmp_onnx, manifest_so_far, head, Path(work), fused=fused, shapes=shapes,
                                   thresholds=thresholds, progress=progress)
                os.replace(built.path, tmp_onnx)
            output, head_section, head_parity = built.output, built.section, built.parity
        progress(f"linting for target {profile.name}")
        findings = lint_onnx(tmp_onnx, profile)
        manifest = new_manifest(
            model={
                "name": model_name,
                "args": args,
                "checkpoint": checkpoint,
                "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
                "seed": seed,
                "init": "checkpoint" if checkpoint else f"random (seed {seed})",
                "output_stride": multiple,
            },
            classes=class_names or default_class_names(num_classes),
            input_spec=spec_in,
            output=output,
            onnx=onnx_file_section(
                tmp_onnx,
                opset=opset,
                exporter=exporter,  # torch.onnx with dynamo=True, or the TorchScript exporter
                precision="fp32",
                target=profile.name,
                export_seconds=round(export_seconds, 3),
            ),
            crf=crf_section,
            head=head_section,
            dynamic_axes={"batch": 0, "height": 2, "width": 3},
            lint=lint_report(findings, profile.name),
            parity={
                "reference": "torch",
                "candidate": "ort",
                "thresholds": thresholds.to_json(),
                "passed": all(r.passed for r in results),
                "shapes": [r.to_json() for r in results],
            },
            versions=_versions(),
        )
    write_manifest(output_dir, manifest)
    crf_parity = None
    if crf_section:
        crf_parity = ParityResult.from_json(crf_section["parity"])
    result = ExportResult(onnx_path, manifest_path, manifest, results, findings, crf_parity, head_parity)
    lint_errors = errors(findings)
    if lint_errors:
        raise VerificationError(
            f"{onnx_path}: target {profile.name}'s parser would reject this graph: "
            + "; ".join(str(f) for f in lint_errors[:5])
        )
    if not result.passed:
        failed_head = next((p for p in head_parity if not p.passed), None)
        if failed_head is not None and all(r.passed for r in results):
            raise VerificationError(f"{onnx_path}: the {head} head does not reproduce the scores graph: "
                                    f"{failed_head.describe()}; limits: {thresholds.describe()}; the manifest records it")
        failed = next(r for r in [*results, *([crf_parity] if crf_parity else [])] if not r.passed)
        raise VerificationError(
            f"{onnx_path}: parity gate failed at shape {list(failed.shape)}: {failed.failed_output.describe()}; "
            f"limits: {thresholds.describe()}; the manifest records the failure"
        )
    if plugins != "none":
        result = _with_plugins(result, output_dir, plugins, input_size, progress)
    return result


def _with_plugins(result: ExportResult, output_dir: Path, plugins: str, input_size, progress) -> ExportResult:
    """The gated export with its depthwise convolutions rewritten (``segdeploy plugins``), in place."""
    from .conv.artifact import apply_plugins
    from .head.artifact import _move_into_place

    with tempfile.TemporaryDirectory(prefix=".segdeploy-plugins-", dir=Path(output_dir).resolve().parent) as work:
        staged = apply_plugins(output_dir, Path(work) / "artifact", plugins=plugins, atrous="none",
                               input_size=tuple(input_size), progress=progress)
        _move_into_place(staged.output_dir, Path(output_dir))
    result.manifest = staged.manifest
    return result


def _check_input_size(input_size, multiple: int, spec) -> tuple[int, int]:
    height, width = (int(v) for v in input_size)
    if spec is not None and spec.valid_input_size is not None:
        valid = spec.valid_input_size(height, width)
        if valid != (height, width):
            raise BadInputError(f"{spec.name} cannot take {height}x{width}; the nearest valid input size is {valid[0]}x{valid[1]}")
        return height, width
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise BadInputError(
            f"--input-size {height} {width}: height and width must be positive multiples of the output stride {multiple} "
            f"(e.g. {max(multiple, height - height % multiple)} {max(multiple, width - width % multiple)})"
        )
    return height, width


def _export_onnx(model, path: Path, height: int, width: int, opset: int, exporter: str) -> tuple[list[str], int | None]:
    """Write the ONNX; returns its output names and the first (prediction) output's channel count."""
    import torch

    example = torch.zeros(1, 3, height, width)
    with torch.inference_mode():
        sample = model(example)
    sample = tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)
    n_outputs = len(sample)
    default_names = [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{i}" for i in range(1, n_outputs)]
    output_names = list(getattr(model, "output_names", default_names))
    dims = {0: "batch", 2: "height", 3: "width"}
    # The exporters print progress and deprecation notes of their own; keep the CLI's output ours.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                dyn = torch.export.Dim.DYNAMIC
                torch.onnx.export(
                    model, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                    input_names=[INPUT_NAME], output_names=output_names,
                    dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},),
                )
            else:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=output_names,
                    dynamic_axes={INPUT_NAME: dims, **{name: dims for name in output_names}},
                )
        except Exception as exc:
            raise SegdeployError(f"ONNX export of the model failed (opset {opset}): {str(exc).splitlines()[0]}") from exc
    _name_dynamic_axes(path, dims)
    return output_names, int(sample[0].shape[1]) if sample[0].dim() >= 2 else None


def _name_dynamic_axes(path: Path, dims: dict[int, str]) -> None:
    """Give the input's symbolic dimensions readable names (the dynamo exporter calls them s0, s1, …)."""
    import onnx

    model = onnx.load(str(path))
    renames = {
        d.dim_param: dims[axis]
        for axis, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim)
        if axis in dims and d.dim_param
    }
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _append_crf(model, onnx_path: Path, spec_in: dict, crf_params: dict, shape, thresholds: Thresholds,
                labels_only: bool = False) -> dict:
    """Append the DenseCRF node to the ONNX file; check ONNX Runtime's CRF graph against
    PyTorch's logits refined by segdeploy's CPU kernel, at ``shape``.

    ``labels_only`` (``--head labels``): the graph's prediction is the CRF's labels alone, uint8
    when the classes fit (``append_crf_node``); the check reads the probabilities too, from a copy
    of the graph that also outputs them, and the labels must agree with the kernel's."""
    import onnx
    import torch

    fields = {f.name for f in dataclasses.fields(CRFParams)}
    unknown = sorted(set(crf_params) - fields)
    if unknown:
        raise BadInputError(f"unknown CRF parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    params = CRFParams(**crf_params)
    with_crf = append_crf_node(onnx.load(str(onnx_path)), labels_only=labels_only, **dataclasses.asdict(params))
    onnx.save(with_crf, str(onnx_path))
    checked = onnx_path
    if labels_only:  # the probabilities stay inside the graph: a copy outputs them for the check
        checked = onnx_path.with_name(f"{onnx_path.stem}-crf-check.onnx")
        with_crf.graph.output.append(onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, None))
        onnx.save(with_crf, str(checked))

    section = {"params": dataclasses.asdict(params), "image_input": "image", "image_layout": "hwc"}
    feed = sample_feed(shape, {"input": spec_in, "crf": section})
    with torch.inference_mode():
        logits = model(torch.from_numpy(feed[spec_in["name"]]))
    logits = (logits[0] if isinstance(logits, (tuple, list)) else logits).numpy()
    expected, expected_labels = dense_crf(logits, feed["image"], params)
    try:
        with OnnxrtRunner.from_artifact(checked, {"crf": section}) as runner:
            actual = runner.infer(feed)
    finally:
        if checked != onnx_path:
            checked.unlink()
    parity = compare_outputs(expected, actual["probabilities"], thresholds, input_shape=shape, name="probabilities")
    section["parity"] = parity.to_json()
    if labels_only:
        agreement = float((actual["labels"] == expected_labels).mean())
        section["labels"] = {"dtype": str(actual["labels"].dtype), "agreement": agreement}
        if agreement < thresholds.min_agreement:
            section["parity"]["passed"] = False
    return section


def crf_output_section(labels_only: bool, classes: int) -> dict:
    """The manifest's ``output`` section of a graph ending in the DenseCRF node: its probabilities
    (and int32 labels), or with ``labels_only`` its labels alone (a ``labels`` head)."""
    if not labels_only:
        return {"name": "probabilities", "dtype": "float32", "layout": "NCHW", "all": ["probabilities", "labels"],
                **Head("multiclass", "softmax").to_manifest()}
    from .head.graph import label_dtype_name

    return {"name": "labels", "dtype": label_dtype_name(classes), "layout": "NHW", "all": ["labels"],
            **Head("multiclass", form="labels").to_manifest()}


def _run_parity(model, onnx_path: Path, output_names, shapes, spec_in: dict, thresholds: Thresholds, prediction: str,
                head: Head):
    with TorchRunner(lambda: model, output_names=output_names) as reference, OnnxrtRunner(SessionFromOnnx(onnx_path)) as candidate:
        return check_parity(reference, candidate, shapes, spec_in, thresholds, prediction, head)


def _versions() -> dict:
    import onnx
    import torch

    versions = {"segdeploy": __version__, "python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions
