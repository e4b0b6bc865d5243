"""Jetson board state for benchmarks: power rails (INA3221), power mode, clocks, thermal throttling.

Everything is read from sysfs under a root folder (``/`` on the board), so the readers work on
any file tree laid out like a Jetson's. Off a Jetson every reader returns nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from ..backend.trt.releases import is_jetson, l4t_release


def power_mode(root: Path = Path("/")) -> str | None:
    """The nvpmodel mode name (e.g. ``MAXN``), from ``nvpmodel -q`` or its status file."""
    status = root / "var/lib/nvpmodel/status"
    if status.is_file():
        return status.read_text().strip().removeprefix("pmode:") or None
    if root == Path("/") and shutil.which("nvpmodel"):
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True).stdout
        match = re.search(r"NV Power Mode:\s*(\S+)", out)
        return match.group(1) if match else None
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def power_rails(root: Path = Path("/")) -> dict[str, float]:
    """Instantaneous power per rail in milliwatts.

    JetPack 5/6 expose INA3221 channels through hwmon (``inN_label``, ``inN_input`` in mV,
    ``currN_input`` in mA); JetPack 4 through iio (``rail_name_N``, ``in_power N_input`` in mW).
    """
    rails: dict[str, float] = {}
    for label in sorted(root.glob("sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label")):
        channel = label.name[2:-len("_label")]
        millivolts, milliamps = _read_int(label.parent / f"in{channel}_input"), _read_int(label.parent / f"curr{channel}_input")
        if millivolts is not None and milliamps is not None:
            rails[label.read_text().strip()] = millivolts * milliamps / 1000.0
    for name_file in sorted(root.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")):
        power = _read_int(name_file.parent / f"in_power{name_file.name.rsplit('_', 1)[1]}_input")
        if power is not None:
            rails[name_file.read_text().strip()] = float(power)
    return rails


def clocks(root: Path = Path("/")) -> dict[str, dict[str, int | None]]:
    """Current and maximum CPU/GPU/EMC frequencies (Hz or kHz, as the board reports them)."""
    found = {}
    cpu0 = root / "sys/devices/system/cpu/cpu0/cpufreq"
    if cpu0.is_dir():
        found["cpu0"] = {"cur": _read_int(cpu0 / "scaling_cur_freq"), "max": _read_int(cpu0 / "scaling_max_freq")}
    for devfreq in sorted(root.glob("sys/class/devfreq/*")):  # the GPU (e.g. 17000000.ga10b), NVDLA, EMC
        found[devfreq.name] = {"cur": _read_int(devfreq / "cur_freq"), "max": _read_int(devfreq / "max_freq")}
    return found


def thermal_zones(root: Path = Path("/")) -> dict[str, dict]:
    """Temperature (°C) and the lowest passive trip point of each thermal zone."""
    zones = {}
    for zone in sorted(root.glob("sys/class/thermal/thermal_zone*")):
        temp = _read_int(zone / "temp")
        if temp is None:
            continue
        passive = [
            _read_int(zone / f"trip_point_{t.name.split('_')[2]}_temp")
            for t in zone.glob("trip_point_*_type")
            if t.read_text().strip() == "passive"
        ]
        passive = [p for p in passive if p is not None]
        name = (zone / "type").read_text().strip() if (zone / "type").is_file() else zone.name
        zones[name] = {"celsius": temp / 1000.0, "throttle_celsius": min(passive) / 1000.0 if passive else None}
    return zones


def throttled_zones(zones: dict[str, dict]) -> list[str]:
    return [n for n, z in zones.items() if z["throttle_celsius"] is not None and z["celsius"] >= z["throttle_celsius"]]


class PowerSampler:
    """Samples the power rails in a background thread while a benchmark runs (``with``)."""

    def __init__(self, root: Path = Path("/"), interval_s: float = 0.02):
        self.root = root
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            reading = power_rails(self.root)
            if reading:
                self.samples.append(reading)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.started

    def mean_mw(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {rail: sum(s.get(rail, 0.0) for s in self.samples) / len(self.samples) for rail in self.samples[0]}


def input_rail(rails: dict[str, float]) -> str | None:
    """The rail measuring the whole module (VDD_IN / POM_5V_IN), else None."""
    for name in rails:
        if name.upper() in ("VDD_IN", "POM_5V_IN", "VDD_IN_SYS"):
            return name
    return None


def board_state(root: Path = Path("/")) -> dict | None:
    """What a benchmark records of the board it ran on; None off a Jetson."""
    if not is_jetson(root):
        return None
    zones = thermal_zones(root)
    return {"l4t": l4t_release(root), "power_mode": power_mode(root), "clocks": clocks(root),
            "thermal": zones, "throttled": throttled_zones(zones)}
