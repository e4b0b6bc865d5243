"""What an evaluation leaves behind: confusion-matrix PNGs, overlays, prediction masks, tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from ..visualize import label_image, mask_palette, overlay
from .evaluate import Evaluation, SampleOutcome

PLOT_HINT = "pip install 'segdeploy[plot]'"


def write_confusion_png(path: str | os.PathLike, confusion: np.ndarray, class_names: list[str], title: str) -> Path | None:
    """A heat map of the row-normalised confusion matrix (share of each true class); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=100)
    axes = figure.add_subplot()
    shown = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    axes.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(n), class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if share[i, j] >= 0.005:
                    axes.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def write_confusion_pngs(evaluation: Evaluation, out_dir: Path) -> tuple[list[str], str | None]:
    """``confusion.png`` for the first artifact (``confusion_LABEL.png`` for the others, ``*_crf`` with
    the CRF); returns the files and a note when matplotlib is missing."""
    written = []
    for index, candidate in enumerate(evaluation.candidates):
        suffix = "" if index == 0 else f"_{_safe(candidate.label)}"
        variants = [("", candidate.confusion)]
        if evaluation.crf is not None:
            variants.append(("_crf", candidate.crf_confusion))
        for crf_suffix, confusion in variants:
            data = " ".join(filter(None, [evaluation.dataset.layout, evaluation.dataset.split]))
            title = (f"{candidate.label} ({candidate.backend}{', CRF' if crf_suffix else ''}) on "
                     f"{data} · {len(evaluation.dataset)} images")
            path = write_confusion_png(out_dir / f"confusion{suffix}{crf_suffix}.png", confusion, evaluation.class_names, title)
            if path is None:
                return written, f"matplotlib is not installed: confusion PNGs skipped ({PLOT_HINT})"
            written.append(str(path))
    return written, None


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


class SampleWriter:
    """Writes overlay strips of the first ``overlays`` samples and, if asked, every prediction mask.

    An overlay strip is ``overlays/ID.png``: the image, the truth, then each artifact's prediction
    (and each CRF prediction), colours of the VOC palette blended over the image (binary models: the
    foreground tinted). Tensor (.npy) samples have no picture: no strip.
    ``predictions/ID.png`` (``predictions/LABEL/ID.png`` with several artifacts; ``predictions_crf``
    with the CRF) are palette PNGs of class indices, as ``segdeploy infer`` writes them.
    """

    def __init__(self, out_dir: Path, labels: list[str], overlays: int = 4, save_predictions: bool = False):
        self.out_dir = Path(out_dir)
        self.labels = labels
        self.overlays = overlays
        self.save_predictions = save_predictions
        self.overlay_files: list[str] = []

    def __call__(self, outcome: SampleOutcome) -> None:
        if outcome.index < self.overlays and outcome.image is not None:
            self.overlay_files.append(str(self._overlay(outcome)))
        if self.save_predictions:
            self._predictions("predictions", outcome, outcome.predictions)
            if outcome.crf_predictions is not None:
                self._predictions("predictions_crf", outcome, outcome.crf_predictions)

    def _predictions(self, folder: str, outcome: SampleOutcome, predictions: list[np.ndarray]) -> None:
        for label, prediction in zip(self.labels, predictions):
            base = self.out_dir / folder / (_safe(label) if len(self.labels) > 1 else "")
            with atomic_path(base / f"{outcome.sample.id}.png") as tmp:
                label_image(prediction, mask_palette(outcome.binary)).save(tmp, format="PNG")

    def _overlay(self, outcome: SampleOutcome) -> Path:
        from PIL import Image, ImageDraw

        def over(labels):
            return overlay(outcome.image, labels, binary=outcome.binary)

        panels = [("image", outcome.image), ("truth", over(outcome.mask))]
        panels += [(label, over(p)) for label, p in zip(self.labels, outcome.predictions)]
        if outcome.crf_predictions is not None:
            panels += [(f"{label}+crf", over(p)) for label, p in zip(self.labels, outcome.crf_predictions)]
        height, width = outcome.image.shape[:2]
        caption = 12
        strip = Image.new("RGB", (width * len(panels) + 2 * (len(panels) - 1), height + caption), (255, 255, 255))
        draw = ImageDraw.Draw(strip)
        for i, (name, panel) in enumerate(panels):
            x = i * (width + 2)
            strip.paste(Image.fromarray(panel), (x, caption))
            draw.text((x + 2, 0), name[: max(width // 6, 4)], fill=(0, 0, 0))
        path = self.out_dir / "overlays" / f"{outcome.sample.id}.png"
        with atomic_path(path) as tmp:
            strip.save(tmp, format="PNG")
        return path


def print_tables(report: dict, console=None) -> None:
    """The summary (one row per artifact, deltas vs the first) and the per-class IoU table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 110))
    results = report.get("compare") or [report]
    crf = "crf" in report
    dataset = report["dataset"]
    several = len(results) > 1
    binary = "binary" in results[0]
    title = (f"{dataset['layout']} {dataset['split'] or '(all)'} · {dataset['count']} images · {dataset['root']}")
    summary = Table(title=title)
    columns = ["artifact", "precision", "backend", "head", "mIoU", "pixel acc"]
    if binary:
        columns += ["IoU fg", "F-beta (b2=0.3)", "F1", "MAE"]
    if several:
        columns += ["Δ mIoU (pts)", "agreement %"]
    if crf:
        columns += ["mIoU +CRF", "CRF gain"] + (["Δ mIoU +CRF", "agreement +CRF %"] if several else [])
    for column in columns:
        summary.add_column(column, justify="left" if column in ("artifact", "precision", "backend", "head") else "right")
    for index, r in enumerate(results):
        row = [r["label"], str(r.get("precision") or "?"), r["backend"], r.get("head", "logits"), f"{r['miou']:.2f}",
               f"{r['pixel_accuracy']:.2f}"]
        if binary:
            b = r["binary"]
            row += [f"{b['iou']:.2f}", f"{b['f_beta']:.2f}", f"{b['f1']:.2f}", "-" if b["mae"] is None else f"{b['mae']:.4f}"]
        if several:
            row += ["ref", "ref"] if index == 0 else [f"{r['miou_delta']:+.2f}", f"{r['agreement']:.2f}"]
        if crf:
            c = r["crf"]
            row += [f"{c['miou']:.2f}", f"{c['miou_gain']:+.2f}"]
            if several:
                row += ["ref", "ref"] if index == 0 else [f"{c['miou_delta']:+.2f}", f"{c['agreement']:.2f}"]
        summary.add_row(*row)
    console.print(summary)

    per_class = Table(title="IoU per class (%)")
    per_class.add_column("class")
    per_class.add_column("pixels %", justify="right")
    for r in results:
        per_class.add_column(r["label"], justify="right")
        if crf:
            per_class.add_column(f"{r['label']} +CRF", justify="right")
    total = max(sum(report["class_pixels"].values()), 1)
    for name in report["classes"]:
        row = [name, f"{100.0 * report['class_pixels'][name] / total:.1f}"]
        for r in results:
            row.append(_iou(r["per_class_iou"][name]))
            if crf:
                row.append(_iou(r["crf"]["per_class_iou"][name]))
        per_class.add_row(*row)
    console.print(per_class)
    if binary:
        console.print(f"[dim]{report.get('binary_scores', '')}[/dim]")
        console.print(f"[dim]masks: {report.get('mask_rule', '')}[/dim]")
    for note in report.get("notes", []):
        console.print(f"[dim]note: {note}[/dim]")


def _iou(value) -> str:
    return "-" if value is None else f"{value:.2f}"


__all__ = ["write_confusion_png", "write_confusion_pngs", "SampleWriter", "print_tables"]
