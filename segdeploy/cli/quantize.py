"""``segdeploy quantize``: post-training INT8 quantization into Q/DQ form."""

from __future__ import annotations

import click

from ..precision.pipeline import make_int8
from .fp16 import gate_options, gate_settings, options_from, progress_display, report, source_options


@click.command()
@click.argument("source", type=click.Path())
@click.option("--calib", "calib_dir", required=True, type=click.Path(file_okay=False),
              help="Calibration images (recursive; jpg/png/bmp), or .npy/.npz tensors for a tensor input.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="entropy", show_default=True,
              help="How activation ranges are chosen.")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.999, show_default=True, help="With --method percentile.")
@click.option("--batch", type=click.IntRange(1), default=8, show_default=True, help="Calibration batch (a fixed-batch graph uses its own).")
@click.option("--min-images", type=click.IntRange(1), default=8, show_default=True, help="Fewest readable calibration images accepted.")
@click.option("--max-images", type=click.IntRange(1), help="Calibrate on at most this many (the first, sorted by path).")
@click.option("--keep-float", multiple=True, metavar="NODE", help="Keep this layer out of INT8 (repeatable).")
@gate_options
@source_options
def quantize(source, calib_dir, method, percentile, batch, min_images, max_images, keep_float, val_dir, target, output,
             as_json, **params):  # fmt: skip
    """Quantize an FP32 ONNX model to INT8 (explicit Q/DQ) for a deployment target.

    SOURCE is an artifact folder from `segdeploy export`, an adopted ONNX file, or any ONNX file
    (then give --mean and --std, unless its input takes tensors). Graphs older than opset 13 are
    converted up first (per-channel Q/DQ needs it), FP16 weights behind Casts are folded, both
    checked and recorded. The target chooses the scheme: TensorRT targets get TensorRT's rules (symmetric int8,
    zero point 0, per-channel weights, float bias); `cpu` gets asymmetric uint8 activations with
    int8 weights, which ONNX Runtime's CPU kernels run fast. The result is compared with FP32 on
    --val (default: the calibration images); when the gate fails the most sensitive layers are
    kept in float until it holds. Same inputs again: the earlier result is reused. A deployment
    head (probabilities, labels, fused) is kept as it is, with no Q/DQ on it: the scores graph
    under it is quantized, and a labels head's maps are compared directly.

    \b
    Examples:
      segdeploy quantize out/dlv3p --calib data/calib --val data/val --target jetpack6.2
      segdeploy quantize out/dlv3p --calib data/calib --target cpu --method minmax
      segdeploy quantize out/dlv3p_labels --calib data/calib --val data/val   (a labels head, kept; gated on its maps)
      segdeploy quantize model.onnx --calib photos --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --json
      segdeploy quantize rgbd.onnx --calib samples/ --val held_out/  (samples/*.npy, held_out/images + masks)
    """
    with progress_display(not as_json) as (progress, calibrated):
        result = make_int8(
            source, calib_dir, output, method=method, target=target, val_dir=val_dir, keep_float=keep_float,
            gate=gate_settings(params), batch=batch, min_images=min_images, max_images=max_images, percentile=percentile,
            options=options_from(params), progress=progress, calibration_progress=calibrated,
        )  # fmt: skip
    report(result, as_json)
