from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .. import _native
from ..crf import CRFParams
from ..errors import SegdeployError
from ..evaluation.datasets import open_dataset
from ..evaluation.evaluate import CRFSettings, artifact_labels, evaluate
from ..evaluation.report import SampleWriter, print_tables, write_confusion_pngs
from ..fileio import write_json
from .common import echo_json, json_option, model_options, model_options_from, parse_key_values


def _crf_settings(crf: bool, crf_at: str, crf_params: tuple[str, ...], crf_threads: int):
    if not crf:
        if crf_params:
            raise click.UsageError("--crf-param needs --crf")
        return None
    overrides = parse_key_values(crf_params, "--crf-param")
    fields = [f.name for f in dataclasses.fields(CRFParams)]
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise click.BadParameter(f"unknown CRF parameter(s) {', '.join(unknown)}; choose from {', '.join(fields)}",
                                 param_hint="--crf-param")  # fmt: skip
    _check_kernels()
    return CRFSettings(dataclasses.replace(CRFParams(), **overrides), crf_at, crf_threads)


def _check_kernels() -> None:
    """Fail before the first image, not after it, when the CRF's compiled library cannot be loaded."""
    try:
        _native.load_library()
    except SegdeployError:
        raise
    except (OSError, AttributeError) as exc:  # missing file, or a stale build without every symbol
        raise SegdeployError(f"--crf needs the segdeploy kernels library, which cannot be loaded ({exc}); "
                             "rebuild it with 'pip install .' or set SEGDEPLOY_KERNELS_LIB") from None


@click.command("eval")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(), metavar="ARTIFACT...")
@click.option("--data", "-d", "data", type=click.Path(), help="Data set folder: Pascal VOC, Cityscapes or images/ + masks/.")
@click.option("--layout", type=click.Choice(["voc", "cityscapes", "folders"]), help="Data set layout. Default: detected.")
@click.option("--split", default=None, help="VOC/Cityscapes split.  [default: val]")
@click.option("--images", "images_dir", type=click.Path(file_okay=False), help="Folder of images (with --masks, instead of --data).")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False), help="Folder of masks with the images' relative names.")
@click.option("--backend", default="ort", show_default=True,
              help="Backend to run on (ort, torch, ...); a comma-separated list gives one per artifact.")
@click.option("--compare", is_flag=True, help="Compare the ARTIFACTs (at least two): mIoU deltas and pixel agreement vs the first.")
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W", help="Network input size. Default: each manifest's.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads per backend. Default: each framework's own.")
@click.option("--limit", type=click.IntRange(1), help="Evaluate only the first N samples (a quick look).")
@click.option("--crf", is_flag=True, help="Also score the predictions refined by the dense CRF (CPU).")
@click.option("--crf-at", type=click.Choice(["image", "input"]), default="image", show_default=True,
              help="Run the CRF at the image's resolution (scores resized bilinearly) or the network input's.")
@click.option("--crf-param", "crf_params", multiple=True, metavar="KEY=VALUE",
              help="CRF parameter, repeatable (e.g. --crf-param iterations=5 --crf-param bilateral_weight=5).")
@click.option("--crf-threads", type=click.IntRange(0), default=0, show_default=True,
              help="CPU threads of the CRF (0: every core); 1 is faster on small images or a busy machine.")
@click.option("--overlays", type=click.IntRange(0), default=4, show_default=True, help="Colour overlays of the first N samples.")
@click.option("--save-predictions", is_flag=True, help="Also write every prediction as a palette PNG of class indices.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="eval", show_default=True,
              help="Folder for eval.json, confusion.png, overlays/ (and predictions/).")
@model_options
@json_option
def eval_cmd(artifacts, data, layout, split, images_dir, masks_dir, backend, compare, input_size, threads, limit, crf,
             crf_at, crf_params, crf_threads, overlays, save_predictions, out_dir, as_json, **params):
    """Score ARTIFACT on a labelled data set: mIoU, per-class IoU, pixel accuracy, confusion matrix.

    The data set is a Pascal VOC folder (JPEGImages + SegmentationClass palette PNGs, split lists
    in ImageSets/Segmentation), a Cityscapes folder (leftImg8bit + gtFine labelIds, mapped to the
    19 train ids) or images/ + masks/ with the same names; mask value 255 is ignored. Predictions
    are made as `segdeploy infer` makes them. Several ARTIFACTs (or --compare) run on the same
    images: the table gives each one's mIoU change in points and the share of pixels it labels
    as the first one does -- an FP32 / FP16 / INT8 / engine parity table.

    An ARTIFACT may be any ONNX file: the model options (--mean, --std, --output, ...) describe
    every ARTIFACT that has no manifest.json, and override the manifest of those that have one.
    A dynamic graph with no recorded size runs at each image's own size.

    
    One-channel (binary) models: also foreground IoU, precision, recall,
    F-beta with beta^2 = 0.3 (the salient-object convention), F1, and the MAE
    of the probability map against the 0/1 truth. A mask with values 0/1
    (and 255) holding a 1 is read as class ids (1 foreground, 255 ignored);
    any other mask (0/255 saliency style, grey) is foreground where >= 128.

    Models with a tensor input (depth, multispectral bands) take --images DIR
    of .npy files, one (C, H, W) array each, already normalised.

    \b
    Examples:
      segdeploy eval artifacts/deeplabv3plus --data VOCdevkit/VOC2012 --split val
      segdeploy eval --compare out/fp32 out/fp16 out/int8 --data cityscapes --limit 50
      segdeploy eval out/fp32 --images val/img --masks val/gt --crf -o eval-crf
    """
    if compare and len(artifacts) < 2:
        raise click.UsageError("--compare needs at least two ARTIFACTs")
    backends = [b.strip() for b in backend.split(",") if b.strip()]
    if not backends:
        raise click.BadParameter("give a backend name", param_hint="--backend")
    crf_settings = _crf_settings(crf, crf_at, crf_params, crf_threads)
    dataset = open_dataset(data, layout=layout, split=split, images=images_dir, masks=masks_dir).head(limit)
    out = Path(out_dir)
    writer = SampleWriter(out, artifact_labels(artifacts), overlays=overlays, save_predictions=save_predictions)
    with click.progressbar(length=len(dataset), label=f"evaluating {len(dataset)} images",
                           file=click.get_text_stream("stderr"), hidden=as_json, show_eta=True) as bar:

        def on_sample(outcome):
            writer(outcome)
            bar.update(1)

        evaluation = evaluate(artifacts, dataset, backends, size=input_size, crf=crf_settings,
                              runner_options={"threads": threads} if threads else None, on_sample=on_sample,
                              options=model_options_from(params))
    report = evaluation.report(limit=limit)
    confusion_files, note = write_confusion_pngs(evaluation, out)
    if note:
        report["notes"].append(note)
    report["outputs"] = {
        "json": str(out / "eval.json"),
        "confusion_png": confusion_files,
        "overlays": writer.overlay_files,
        "predictions": str(out / "predictions") if save_predictions else None,
    }
    write_json(out / "eval.json", report)
    if as_json:
        echo_json(report)
        return
    print_tables(report)
    click.echo(f"wrote {out / 'eval.json'}" + (f", {len(confusion_files)} confusion PNG(s)" if confusion_files else "")
               + (f", {len(writer.overlay_files)} overlays in {out / 'overlays'}" if writer.overlay_files else ""))
