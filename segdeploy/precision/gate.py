"""The accuracy gate, and the sensitivity analysis that meets it by keeping layers in higher precision.

A reduced-precision model passes when, against FP32 on the validation images, its masks (the
labels the manifest's head reads: argmax over channels, a one-channel binary output
thresholded, or the label maps a ``labels`` head outputs) agree on at least the fraction
``min_agreement`` of pixels, (with masks) its mIoU is at most ``max_miou_drop`` points lower and,
when ``max_prob_error`` is set, no pixel's probability moved by more than it (a ``labels`` head
has no probabilities: the tools refuse that limit for it). When the fully reduced model misses that budget:

1. each candidate layer is reduced *alone* (everything else kept in higher precision) and
   scored on a small subset of the images: lost agreement first, logit noise as tie-break;
2. the most sensitive layers are kept in higher precision, the smallest such set being found by
   doubling and then bisecting the number kept, each step checked on the full validation set.

The builder is any ``build(keep: frozenset[str]) -> Path``, so INT8 and FP16 share this search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..outputs import Head
from .comparison import Comparison, Reference, compare, open_session


@dataclass(frozen=True)
class Budget:
    min_agreement: float = 0.99  # fraction of pixels whose label matches FP32's
    max_miou_drop: float = 0.5  # mIoU points below FP32, when masks are given
    #: Largest |Δp| allowed at any pixel; None: reported, not gated (a pixel near the decision
    #: boundary may move far in probability without changing any mask, which the other limits gate).
    max_prob_error: float | None = None

    def misses(self, result: Comparison, head: Head = Head()) -> list[str]:
        """Why ``result`` fails the budget (empty when it passes)."""
        missed = []
        if result.agreement < self.min_agreement:
            missed.append(f"{agreement_name(head)} {result.agreement:.4%} < {self.min_agreement:.4%}")
        if result.miou_drop is not None and result.miou_drop > self.max_miou_drop:
            missed.append(f"mIoU drop {result.miou_drop:.3f} pt > {self.max_miou_drop:g} pt")
        if self.max_prob_error is not None and result.max_prob_error is not None and result.max_prob_error > self.max_prob_error:
            missed.append(f"max probability error {result.max_prob_error:.4g} > {self.max_prob_error:g}")
        return missed


def agreement_name(head: Head) -> str:
    """What the agreement counts, as messages say it."""
    if not head.has_scores:
        return "label map agreement"
    return "mask agreement (binary threshold)" if head.kind == "binary" else "argmax agreement"


@dataclass
class GateOutcome:
    model: Path
    comparison: Comparison
    passed: bool
    missed: list[str]
    #: The fully reduced model and its comparison, before any layer was kept back.
    initial: Comparison
    initial_model: Path
    kept: list[str] = field(default_factory=list)
    #: Candidate layers, most sensitive first (empty when the fully reduced model passed).
    ranking: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


def run_gate(
    build: Callable[[frozenset], Path],
    candidates: list[tuple[str, str]],
    reference: Reference,
    subset: Reference,
    budget: Budget,
    sensitivity: bool = True,
    progress: Callable[[str], None] = lambda message: None,
) -> GateOutcome:
    progress("checking the reduced-precision model against FP32")
    model = build(frozenset())
    initial = _check(model, reference)
    missed = budget.misses(initial, reference.outputs.head)
    outcome = GateOutcome(model, initial, not missed, missed, initial, model)
    if not missed or not sensitivity or not candidates:
        return outcome

    names = [name for name, _ in candidates]
    ranking = []
    for index, (name, op_type) in enumerate(candidates):
        progress(f"sensitivity {index + 1}/{len(candidates)}: {name}")
        alone = _check(build(frozenset(names) - {name}), subset)
        ranking.append({"node": name, "op_type": op_type, **alone.to_json()})
    ranking.sort(key=lambda r: (r["agreement"], -(r["noise_ratio"] or 0.0)))
    outcome.ranking = ranking
    order = [r["node"] for r in ranking]

    def attempt(count: int) -> tuple[Path, Comparison, list[str]]:
        progress(f"keeping the {count} most sensitive layer(s) in higher precision")
        path = build(frozenset(order[:count]))
        result = _check(path, reference)
        misses = budget.misses(result, reference.outputs.head)
        outcome.steps.append({"kept": count, **result.to_json(), "passed": not misses})
        return path, result, misses

    # Double the number kept until the budget holds, then bisect down to the fewest that do.
    failing, count, best = 0, 1, None
    while True:
        trial = attempt(count)
        if not trial[2]:
            best = (count, trial)
            break
        if count == len(order):
            break
        failing, count = count, min(2 * count, len(order))
    if best is None:  # even with every candidate kept back the budget is missed
        path, result, misses = trial
        outcome.model, outcome.comparison, outcome.missed, outcome.kept = path, result, misses, order
        return outcome
    passing = best[0]
    while passing - failing > 1:
        middle = (passing + failing) // 2
        trial = attempt(middle)
        if trial[2]:
            failing = middle
        else:
            passing, best = middle, (middle, trial)
    path, result, _ = best[1]
    outcome.model, outcome.comparison, outcome.passed, outcome.missed = path, result, True, []
    outcome.kept = order[:passing]
    return outcome


def _check(path: Path, reference: Reference) -> Comparison:
    return compare(open_session(path), reference)
