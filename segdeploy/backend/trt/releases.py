"""TensorRT releases: version parsing, the one table of what differs between them, and JetPack.

Every rule that depends on the release (``plan``, ``trtexec``, ``loader``, ``segdeploy lint``)
asks a :class:`Release` here, so a new release is one edit of :data:`FEATURES`. Nothing here
imports TensorRT: a plan for a Jetson is made on any machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Hardware compatibility level segdeploy builds with (``--hardware-compat``), and the compute
#: capability it starts at (Ampere).
HARDWARE_COMPAT_LEVEL = "ampere+"
HARDWARE_COMPAT_MIN_CC = (8, 0)


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; ``"11"`` -> ``(11,)``."""
    match = re.match(r"^\s*(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


@dataclass(frozen=True)
class Feature:
    """One release difference: the releases (and boards) that have it, and its trtexec flag."""

    #: The first TensorRT release that has it; None: no TensorRT release (TensorRT for RTX only).
    since: tuple[int, ...] | None
    #: The first release without it; None: every later one has it.
    until: tuple[int, ...] | None = None
    #: Whether TensorRT for RTX (1.x, versioned apart from TensorRT) has it.
    rtx: bool = False
    #: "jetson" or "desktop" where only one kind of device has it.
    platform: str | None = None
    #: The trtexec flag asking for it (a format string), where it has one.
    trtexec: str | None = None

    @property
    def first(self) -> str:
        """The first release that has it, as people write it (``"8.6"``)."""
        return ".".join(map(str, self.since)) if self.since else "none"


#: The supported releases (8.5 / 8.6 on JetPack 5 / 6.0, 10.x, 11.x) differ in these, and only these.
#: Typing: 8.x types networks weakly (the FP16/INT8 artifact's precision is switched on with builder
#: flags; explicit Q/DQ for INT8, no calibrator); 10.x types them strongly when asked
#: (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: the ONNX file's types are the precision);
#: 11.x always does (the flag is deprecated there and not set). TensorRT for RTX 1.x (``rtx``) is
#: strongly typed like 11.x and compiles ahead of time for named compute capabilities, on any
#: machine: its engines carry no tactics timed on the build machine, and its kernels are
#: JIT-compiled on the user's GPU.
FEATURES: dict[str, Feature] = {
    "precision_flags":              Feature((8,), until=(10,), trtexec="--{precision}"),
    "strongly_typed_flag":          Feature((10,), until=(11,), trtexec="--stronglyTyped"),
    "always_strongly_typed":        Feature((11,), rtx=True),
    # Plugins as IPluginV3 creators from getCreators(), registered with IPluginRegistry.load_library.
    "ipluginv3":                    Feature((10,), rtx=True, trtexec="--dynamicPlugins={library}"),
    "int64_io":                     Feature((10,), rtx=True),
    # The ops the 8.x parsers gained late or lack (segdeploy.lint.LATE_PARSER_OPS) are all there.
    "late_parser_ops":              Feature((10,), rtx=True),
    # Engines for a list of GPU architectures, built without a GPU (TensorRT for RTX only).
    "compute_capabilities":         Feature(None, rtx=True, trtexec="--computeCapabilities={capabilities}"),
    "timing_cache":                 Feature((8,), trtexec="--timingCacheFile={path}"),
    "builder_optimization_level":   Feature((8, 6), trtexec="--builderOptimizationLevel={level}"),
    "version_compatible":           Feature((8, 6), trtexec="--versionCompatible"),
    "hardware_compatibility_level": Feature((8, 6), platform="desktop", trtexec="--hardwareCompatibilityLevel={level}"),
    # DLA cores are on Jetson Xavier/Orin only.
    "dla":                          Feature((8,), platform="jetson", trtexec="--useDLACore={core}"),
}  # fmt: skip


@dataclass(frozen=True)
class Release:
    """A TensorRT release as a target names it: what it has comes from :data:`FEATURES`."""

    version: tuple[int, ...]
    jetson: bool = False
    #: TensorRT for RTX (``import tensorrt_rtx``) rather than TensorRT (``import tensorrt``).
    rtx: bool = False

    @classmethod
    def of_target(cls, target) -> Release | None:
        """The release of a ``segdeploy.targets.Target``; None for an ONNX Runtime target."""
        if not target.tensorrt:
            return None
        return cls(parse_version(target.tensorrt), jetson=target.name.startswith("jetpack"), rtx=target.edition == "rtx")

    @property
    def product(self) -> str:
        return "TensorRT for RTX" if self.rtx else "TensorRT"

    @property
    def module(self) -> str:
        """The Python package to import."""
        return "tensorrt_rtx" if self.rtx else "tensorrt"

    @property
    def major(self) -> int:
        return self.version[0]

    def reaches(self, feature: str) -> bool:
        """Whether the release is new (and not too new) for ``feature``, whatever the device."""
        spec = FEATURES[feature]
        if self.rtx:
            return spec.rtx
        return spec.since is not None and self.version >= spec.since and (spec.until is None or self.version < spec.until)

    def has(self, feature: str) -> bool:
        """Whether builds for this release (and kind of device) have ``feature``."""
        platform = FEATURES[feature].platform
        return self.reaches(feature) and platform in (None, "jetson" if self.jetson else "desktop")

    @property
    def strong_typing(self) -> str | None:
        """``None`` (weak), ``"flag"`` (opted into) or ``"always"``."""
        if self.has("always_strongly_typed"):
            return "always"
        return "flag" if self.has("strongly_typed_flag") else None

    def precision_flags(self, precision: str) -> list[str]:
        """Builder precision flags: only weakly typed releases have and need them."""
        return [precision] if self.has("precision_flags") and precision != "fp32" else []


def trtexec_flag(feature: str, **values) -> str:
    """``feature``'s trtexec flag with its value filled in."""
    return FEATURES[feature].trtexec.format(**values)


# --------------------------------------------------------------------------- JetPack

#: L4T release prefix -> JetPack release, newest first.
JETPACK_RELEASES = [
    ("R38.2", "7.0"), ("R36.4.4", "6.2.1"), ("R36.4.3", "6.2"), ("R36.4", "6.1"), ("R36.3", "6.0"),
    ("R36.2", "6.0 DP"), ("R35.6", "5.1.4"), ("R35.5", "5.1.3"), ("R35.4", "5.1.2"), ("R35.3", "5.1.1"),
    ("R35.2", "5.1"), ("R35.1", "5.0.2"), ("R32.7", "4.6.x"),
]  # fmt: skip


def is_jetson(root: Path = Path("/")) -> bool:
    return (root / "etc/nv_tegra_release").is_file()


def l4t_release(root: Path = Path("/")) -> str | None:
    """``R36.4.3`` from ``# R36 (release), REVISION: 4.3, ...``."""
    path = root / "etc/nv_tegra_release"
    if not path.is_file():
        return None
    match = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", path.read_text())
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def jetpack_release(l4t: str | None) -> str | None:
    """The JetPack release of an L4T release (``R36.4.3`` -> ``6.2``), when known."""
    if not l4t:
        return None
    for prefix, jetpack in JETPACK_RELEASES:
        if l4t == prefix or l4t.startswith(prefix + "."):
            return jetpack
    return None
