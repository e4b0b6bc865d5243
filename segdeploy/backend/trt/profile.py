"""Optimization profiles: the min/opt/max shapes of a build's inputs, from the manifest and the options.

Pure shape arithmetic (no ONNX, no TensorRT), so the CLI checks a profile before anything is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import BadInputError


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization profile: min/opt/max NCHW shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max

    def contains(self, shape) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> ShapeRange:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def format_shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def parse_shape(text: str, option: str = "shape") -> tuple[int, ...]:
    """``"1x3x512x512"`` (N, C, H, W) or ``"512x512"`` (H, W); commas work as separators too."""
    parts = [p for p in re.split(r"[x,×]", str(text).strip().lower()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) not in (2, 4) or min(dims, default=0) < 1:
        raise BadInputError(f"{option} {text!r}: expected NxCxHxW (e.g. 1x3x512x512) or HxW of positive integers")
    return dims


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"4"`` -> (1, 4, 4): batches 1..4, tuned for 4; ``"1:2:8"`` -> min:opt:max."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = [1, values[0], values[0]]
    if len(values) != 3 or min(values) < 1 or not values[0] <= values[1] <= values[2]:
        raise BadInputError(f"--batch {text!r}: expected N (batches 1..N) or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return tuple(values)


def resolve_profile(dims: list, spec: dict, batch=None, min_shape=None, opt_shape=None, max_shape=None) -> ShapeRange:
    """The optimization profile for an input with ONNX dimensions ``dims`` (None where dynamic).

    Defaults come from the manifest: its ``input.shape_range`` (``{"min", "opt", "max"}`` NCHW)
    when present, else batch 1..1 (``--batch``) at the manifest's size. ``--min/--opt/--max``
    take NCHW or HxW (the batch then comes from ``--batch``). Static ONNX dimensions must be
    met; H and W must be multiples of the manifest's ``size_multiple``.
    """
    if len(dims) != 4:
        raise BadInputError(f"expected an NCHW image input, found {len(dims)} dimensions")
    batches = parse_batch(batch) if batch is not None else None
    # The graph's channel count, else the manifest's (a 1-channel GRAY or 4/6-channel tensor input), else RGB.
    channels = dims[1] or int(spec.get("channels") or {"GRAY": 1}.get(spec.get("color"), 3))
    size = spec.get("size") or [None, None]
    height, width = dims[2] or size[0], dims[3] or size[1]
    declared = spec.get("shape_range")
    if declared:
        base = ShapeRange.from_json(declared)
    else:
        if (not height or not width) and opt_shape is not None:  # a dynamic graph without a recorded size: --opt's
            height, width = parse_shape(opt_shape, "--opt")[-2:]
        if not height or not width:
            raise BadInputError(f"input {spec.get('name', '?')!r}: its height and width are dynamic and no size is "
                                "recorded for it (manifest, or segdeploy adopt --size): pass --opt HxW (and --min/--max "
                                "for a range)")
        static = (dims[0] or 1, channels, height, width)
        base = ShapeRange(static, static, static)
    if batches:
        base = ShapeRange(*[(b, *s[1:]) for b, s in zip(batches, (base.min, base.opt, base.max))])

    def full(value, batch_from, which):
        """NCHW from --min/--opt/--max; an HxW value takes its batch from ``batch_from``."""
        dims4 = parse_shape(value, f"--{which}")
        return (batch_from[0], channels, *dims4) if len(dims4) == 2 else dims4

    given = {k: v for k, v in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)) if v is not None}
    if set(given) == {"opt"}:
        # Like trtexec's --optShapes alone: one spatial shape; the batch range stays.
        lo, mid, hi = (full(given["opt"], b, "opt") for b in (base.min, base.opt, base.max))
        if len(parse_shape(given["opt"])) == 4:
            lo = hi = mid
    else:
        lo = full(given["min"], base.min, "min") if "min" in given else base.min
        hi = full(given["max"], base.max, "max") if "max" in given else base.max
        if "opt" in given:
            mid = full(given["opt"], base.opt, "opt")
        else:  # the manifest's shape, clamped into the range
            mid = tuple(min(max(o, a), b) for o, a, b in zip(base.opt, lo, hi))
    profile = ShapeRange(lo, mid, hi)
    _check_profile(profile, dims, spec)
    return profile


def _check_profile(profile: ShapeRange, dims: list, spec: dict) -> None:
    shapes = {"min": profile.min, "opt": profile.opt, "max": profile.max}
    for which, shape in shapes.items():
        if len(shape) != 4:
            raise BadInputError(f"--{which} {format_shape(shape)}: expected 4 dimensions (NxCxHxW)")
        for axis, (onnx_dim, value) in enumerate(zip(dims, shape)):
            if onnx_dim and value != onnx_dim:
                name = "NCHW"[axis]
                raise BadInputError(f"--{which} {format_shape(shape)}: the ONNX input's {name} is fixed at {onnx_dim}")
    if not all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max)):
        raise BadInputError(f"the profile must have min <= opt <= max in every dimension; got min {format_shape(profile.min)}, "
                            f"opt {format_shape(profile.opt)}, max {format_shape(profile.max)}")
    multiple = int(spec.get("size_multiple") or 1)
    for which, shape in shapes.items():
        if shape[2] % multiple or shape[3] % multiple:
            raise BadInputError(f"--{which} {format_shape(shape)}: height and width must be multiples of the model's "
                                f"size multiple {multiple}")


def derived_profile(name: str, dims: list, image_name: str, image_dims: list, profile: ShapeRange,
                    where: str = "") -> tuple[list, ShapeRange]:
    """A further input's (static dimensions, range): static dimensions stay, symbolic ones shared with the
    image input (same name) follow its profile - the dense CRF's uint8 image (N, H, W, 3) beside images
    (N, 3, H, W). ``dims``/``image_dims`` are ``onnx_io.tensor_dims``: int, symbol name or None."""
    axis_of = {d: axis for axis, d in enumerate(image_dims) if isinstance(d, str)}
    static, ranges = [], ([], [], [])
    for d in dims:
        if isinstance(d, int):
            static.append(d)
            values = (d, d, d)
        elif d in axis_of:
            static.append(None)
            values = (shape[axis_of[d]] for shape in (profile.min, profile.opt, profile.max))
        else:
            raise BadInputError(f"{where}input {name!r} has a dynamic dimension {d or '?'} that is not one of input "
                                f"{image_name!r}'s, so its profile cannot be derived")
        for shape, value in zip(ranges, values):
            shape.append(value)
    return static, ShapeRange(*map(tuple, ranges))
