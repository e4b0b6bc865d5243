"""What a segmentation output means: the kind of head, and labels and probabilities read from it.

Two kinds cover deployed segmentation models:

- ``multiclass``: C ≥ 2 channels of logits (``activation`` "none") or probabilities
  ("softmax"); the label of a pixel is the argmax over channels.
- ``binary``: one channel, a sigmoid probability ("sigmoid", threshold 0.5) or a raw logit
  ("none", threshold 0): background removal, drivable area, lanes, medical foreground. The
  argmax of one channel is always 0, so gates and metrics must threshold it instead.

The kind is detected from the graph (channel count, the op producing the output) and recorded
in the manifest's ``output`` section; ``--kind``/``--threshold`` override it.

The *deployment head* says what the graph hands back (``segdeploy.head`` appends it): ``logits``
(scores, the host reads them), ``probabilities`` (a Softmax or Sigmoid in the graph) or ``labels``
(the class map itself, (N, H, W) uint8 or int32: the argmax or threshold runs in the graph, and the
full-resolution scores never leave the device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BadInputError

KINDS = ("multiclass", "binary")
ACTIVATIONS = ("none", "sigmoid", "softmax")
#: The ops whose output is already a probability, by the activation name the manifest records.
ACTIVATION_OPS = {"Sigmoid": "sigmoid", "Softmax": "softmax", "HardSigmoid": "sigmoid"}
#: What a prediction output holds: scores (N, C, H, W) to read, or the labels (N, H, W) themselves.
FORMS = ("scores", "labels")
#: The deployment heads, by the name ``--head`` and the manifest use.
HEAD_NAMES = ("logits", "probabilities", "labels")


@dataclass(frozen=True)
class Head:
    """How to read a prediction output of shape (N, C, H, W)."""

    kind: str = "multiclass"
    activation: str = "none"
    #: Binary heads: a pixel is foreground when its score is above this.
    threshold: float = 0.0
    #: "labels": the graph already gives class ids (N, H, W); "scores": the host reads (N, C, H, W).
    form: str = "scores"
    #: Labels heads: computed by the fused upsample + argmax node rather than Resize then ArgMax.
    fused: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"output kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"output activation {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if self.form not in FORMS:
            raise ValueError(f"output form {self.form!r}: expected one of {', '.join(FORMS)}")

    @classmethod
    def detect(cls, channels: int | None, activation: str = "none", threshold: float | None = None) -> Head:
        """The head of an output with ``channels`` channels produced by ``activation``."""
        if channels == 1:
            default = 0.5 if activation == "sigmoid" else 0.0
            return cls("binary", activation if activation == "sigmoid" else "none", default if threshold is None else threshold)
        return cls("multiclass", activation if activation == "softmax" else "none")

    @classmethod
    def from_manifest(cls, manifest: dict | None) -> Head:
        """The manifest's head; manifests written before heads were recorded are multi-class logits."""
        output = (manifest or {}).get("output") or {}
        form = "labels" if output.get("head") == "labels" else "scores"
        return cls(output.get("kind", "multiclass"), output.get("activation", "none"), float(output.get("threshold", 0.0)),
                   form, bool(output.get("fused", False)))

    def to_manifest(self) -> dict:
        """The fields this head adds to the manifest's ``output`` section."""
        fields = {"kind": self.kind, "activation": self.activation, "head": self.name}
        if self.kind == "binary":
            fields["threshold"] = self.threshold
        if self.form == "labels":
            fields["fused"] = self.fused
        return fields

    @property
    def name(self) -> str:
        """The deployment head: ``labels``, ``probabilities`` (an activation in the graph) or ``logits``."""
        if self.form == "labels":
            return "labels"
        return "probabilities" if self.activation != "none" else "logits"

    @property
    def has_scores(self) -> bool:
        """Whether the output holds per-class scores (probabilities can be read from it)."""
        return self.form == "scores"

    @property
    def num_classes(self) -> int | None:
        """Classes the labels take: 2 for a binary head; None (the channel count) for multi-class."""
        return 2 if self.kind == "binary" else None

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """Class ids (N, H, W) from scores (N, C, H, W): argmax, or 1 where a binary score passes the threshold.

        A labels head's output is the class ids already, (N, H, W) (or (N, 1, H, W)): returned as they are.
        """
        if self.form == "labels":
            return scores[:, 0] if scores.ndim == 4 else scores
        if self.kind == "binary":
            return (scores[:, 0] > self.threshold).astype(np.uint8)
        return scores.argmax(axis=1)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Probabilities (N, C, H, W) float32: softmax over channels, or the sigmoid of one channel,
        unless the graph already applied it. A labels head has none: ``BadInputError``."""
        if self.form == "labels":
            raise BadInputError("the model outputs labels only (deployment head 'labels'): no probabilities to read; "
                                "export or convert it with --head probabilities or --head logits")
        scores = scores.astype(np.float32, copy=False)
        if self.activation != "none":
            return scores
        if self.kind == "binary":
            return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
        shifted = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def describe(self) -> str:
        if self.form == "labels":
            how = "fused upsample + argmax" if self.fused else ("threshold" if self.kind == "binary" else "argmax")
            return f"labels: class ids computed in the graph ({how})"
        if self.kind == "binary":
            what = "sigmoid probability" if self.activation == "sigmoid" else "logit"
            return f"binary: one {what} channel, foreground where > {self.threshold:g}"
        return "multi-class " + ("probabilities (softmax)" if self.activation == "softmax" else "logits") + ": argmax over channels"
