"""TensorRT loaders: import, plugins, build (through Polygraphy's loaders) and deserialization.

The only module that imports TensorRT (inside :func:`import_tensorrt`). Every supported release
(8.5 .. 11.x) has the name-based I/O API used here and by the runner (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); where releases differ the plan
says how (``releases.FEATURES``), and the few API additions (``IProgressMonitor``,
``IPluginRegistry.load_library``) are probed with ``hasattr``.

The build itself is Polygraphy's ``NetworkFromOnnxPath`` -> ``CreateConfig`` ->
``EngineBytesFromNetwork`` (which merges and saves the timing cache); segdeploy adds the
version rules, DLA placement and progress reporting.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from ...errors import MissingDependencyError, SegdeployError
from .cuda import cuda_api
from .releases import is_jetson, jetpack_release, l4t_release, parse_version

#: Python package of each TensorRT edition, and how a user installs it.
EDITIONS = {
    "tensorrt": ("tensorrt", "On a Jetson it comes with JetPack (apt install python3-libnvinfer; use a venv made with "
                             "--system-site-packages); on a desktop: pip install tensorrt"),
    "rtx": ("tensorrt_rtx", "pip install 'segdeploy[rtx]' (TensorRT for RTX: pip install tensorrt-rtx-cu13)"),
}
_selected: list[str] = []  # the edition this process uses, once chosen


class TensorRTMissingError(MissingDependencyError):
    """TensorRT's Python package is not importable (exit 2)."""

    def __init__(self, detail: str = "", edition: str = "tensorrt"):
        module, install = EDITIONS[edition]
        product = "TensorRT for RTX" if edition == "rtx" else "TensorRT"
        SegdeployError.__init__(
            self, f"{product} is not installed: its Python package (import {module}) is missing"
            + (f" ({detail})" if detail else "") + f". {install}",
        )
        self.package = module


def use_edition(edition: str) -> None:
    """Choose TensorRT or TensorRT for RTX for this process, before anything imports either.

    Both have the same API; Polygraphy picks one per process (``polygraphy.config.USE_TENSORRT_RTX``,
    read when its TensorRT modules are imported), so one process builds or runs engines of one edition.
    """
    from polygraphy import config

    if _selected and _selected[0] != edition:
        raise SegdeployError(f"this process already uses {_selected[0]}; engines of another TensorRT edition "
                             f"({edition}) need a process of their own (run a second segdeploy command)")
    if "polygraphy.backend.trt.util" in sys.modules and config.USE_TENSORRT_RTX != (edition == "rtx"):
        raise SegdeployError(f"Polygraphy was imported for the other TensorRT edition before segdeploy chose {edition}")
    config.USE_TENSORRT_RTX = edition == "rtx"
    if not _selected:
        _selected.append(edition)


def edition() -> str:
    """The edition this process uses (TensorRT unless ``use_edition("rtx")`` was called)."""
    return _selected[0] if _selected else "tensorrt"


def import_tensorrt():
    """The chosen edition's module (``tensorrt`` or ``tensorrt_rtx``)."""
    chosen = edition()
    module = EDITIONS[chosen][0]
    try:
        trt = importlib.import_module(module)
    except ImportError as exc:
        raise TensorRTMissingError(str(exc) if module not in str(exc) else "", chosen) from None
    if chosen == "rtx":
        _let_rtx_parser_find_its_library(Path(trt.__file__).parent.parent / "tensorrt_rtx_libs")
    return trt


def _let_rtx_parser_find_its_library(libs: Path) -> None:
    """TensorRT for RTX's ONNX parser dlopen()s ``libtensorrt_rtx.so`` when it meets a plugin node.

    The wheel ships only ``libtensorrt_rtx.so.1``, so any graph with a plugin node aborts the process
    ("terminate called without an active exception": the parser throws "Unable to open library:
    libtensorrt_rtx.so" inside a noexcept function). The parser looks beside itself (RPATH $ORIGIN),
    so the development symlink that a tarball install has is added there when missing.
    """
    real, link = libs / "libtensorrt_rtx.so.1", libs / "libtensorrt_rtx.so"
    if not real.is_file() or link.exists():
        return
    tmp = libs / f".libtensorrt_rtx.so.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(real.name)
        tmp.replace(link)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SegdeployError(f"TensorRT for RTX's ONNX parser needs {link} to read plugin nodes, and it could not be "
                             f"made ({exc}); make it once: ln -s {real.name} {link}") from None


def tensorrt_version() -> tuple[int, ...]:
    return parse_version(import_tensorrt().__version__)


@contextlib.contextmanager
def polygraphy_errors(what: str):
    """Polygraphy logs to stdout and raises PolygraphyException: send its log to stderr, re-raise ours."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING), contextlib.redirect_stdout(sys.stderr):
            yield
    except PolygraphyException as exc:
        lines = str(exc).strip().splitlines()
        raise SegdeployError(f"{what} failed: {lines[-1] if lines else type(exc).__name__}") from None


_REGISTERED: dict[str, object] = {}


def load_plugins(libraries) -> list[str]:
    """Register plugin libraries with TensorRT (before parsing or deserializing), once per process.

    A library exporting ``getCreators`` (segdeploy's, kernels/trt_plugin) goes through
    ``IPluginRegistry.load_library`` (TensorRT >= 10); one registering its creators statically
    (REGISTER_TENSORRT_PLUGIN) is registered by loading it.
    """
    trt = import_tensorrt()
    trt.init_libnvinfer_plugins(_logger(), "")
    loaded = []
    for library in libraries:
        library = Path(library)
        if not library.is_file():
            raise SegdeployError(f"the TensorRT plugin library {library} does not exist; build it from kernels/ where "
                                 "TensorRT's headers are installed, or point SEGDEPLOY_TRT_PLUGIN_LIB at it")
        path = str(library.resolve())
        if path not in _REGISTERED:
            try:
                handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise SegdeployError(f"the TensorRT plugin library {path} could not be loaded: {exc}") from None
            registry = trt.get_plugin_registry()
            if hasattr(handle, "getCreators") and hasattr(registry, "load_library"):
                _REGISTERED[path] = registry.load_library(path)
                if _REGISTERED[path] is None:
                    raise SegdeployError(f"TensorRT's plugin registry refused {path} (its log above says why)")
            else:
                _REGISTERED[path] = handle
        loaded.append(path)
    return loaded


@functools.cache
def _logger():
    from polygraphy.backend.trt import util as trt_util

    return trt_util.get_trt_logger()


def _progress_monitor(progress):
    """An IProgressMonitor forwarding phase/step messages (TensorRT >= 10), or None."""
    trt = import_tensorrt()
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            progress(f"building: {phase_name}")

        def step_complete(self, phase_name, step):
            total = self.steps.get(phase_name)
            if total and total > 1:
                progress(f"building: {phase_name} {step + 1}/{total}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Monitor()


def build_serialized_engine(plan, progress=lambda message: None):
    """(serialized engine, build seconds, I/O tensors) for a :class:`segdeploy.backend.trt.plan.BuildPlan`.

    The I/O tensors are read from the parsed network (:func:`network_io`): an ahead-of-time
    engine of TensorRT for RTX cannot be deserialized where no GPU is.
    """
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    if plan.plugins:
        progress(f"loading plugins: {', '.join(p.name for p in plan.plugins)}")
        load_plugins(plan.plugins)
    profile = Profile()
    for name, shapes in plan.profiles.items():
        profile.add(name, shapes.min, shapes.opt, shapes.max)
    flags = plan.precision_flags
    monitor = _progress_monitor(progress)
    options = {"profiles": [profile], "load_timing_cache": str(plan.timing_cache) if plan.timing_cache else None}
    if not plan.release.rtx:  # TensorRT for RTX has no precision flags (strongly typed) and no TF32 switch
        options.update(fp16="fp16" in flags, int8="int8" in flags, tf32=False)
    if plan.workspace_mib:
        options["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(plan.workspace_mib) << 20}
    if plan.opt_level is not None:
        options["builder_optimization_level"] = plan.opt_level
    if plan.version_compatible:
        options["version_compatible"] = True
    if plan.hardware_compat:
        options["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if monitor is not None:
        options["progress_monitor"] = monitor

    if plan.release.rtx:
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        # Named architectures compile ahead of time, on any machine (build.py names the GPU present when none is given).
        capabilities = [tuple(int(p) for p in c.split(".")) for c in plan.compute_capabilities]
        config = CreateConfigRTX(compute_capabilities=capabilities, **options)
    else:
        config = CreateConfig(**options)
    if plan.dla_core is not None:
        config = _on_dla(config, plan.dla_core, plan.gpu_fallback)
    progress(f"parsing {plan.onnx_path.name} and building ({plan.precision}, {plan.release.product} {trt.__version__})")
    started = time.perf_counter()
    with polygraphy_errors("the TensorRT build"):
        network = NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=plan.strong_typing == "flag")()
        io = network_io(network[1], plan.profiles)
        serialized = EngineBytesFromNetwork(network, config, save_timing_cache=str(plan.timing_cache) if plan.timing_cache else None)()
    seconds = time.perf_counter() - started
    if serialized is None:
        raise SegdeployError("the TensorRT build returned no engine; its log above says why")
    return serialized, seconds, io


def _on_dla(create_config, core: int, gpu_fallback: bool):
    """A config loader that places layers on DLA core ``core`` (GPU fallback optional)."""
    trt = import_tensorrt()

    def configure(builder, network):
        config = create_config(builder, network)
        if getattr(builder, "num_DLA_cores", 0) <= core:
            raise SegdeployError(f"--dla-core {core}: this device has {getattr(builder, 'num_DLA_cores', 0)} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = core
        if gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        return config

    return configure


def deserialize(engine_bytes, plugins=()):
    """(ICudaEngine, IRuntime) from serialized bytes (plugins loaded first)."""
    trt = import_tensorrt()
    if plugins:
        load_plugins(plugins)
    else:
        trt.init_libnvinfer_plugins(_logger(), "")
    runtime = trt.Runtime(_logger())
    with contextlib.suppress(AttributeError):
        runtime.engine_host_code_allowed = True  # version-compatible engines carry their lean runtime
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise SegdeployError("TensorRT could not deserialize the engine (its log above says why)")
    return engine, runtime  # the runtime must outlive the engine: callers keep both


def engine_io(engine_and_runtime) -> list[dict]:
    """Each I/O tensor: name, mode, dtype, shape (-1 where dynamic) and, for inputs, the profile-0 range."""
    trt = import_tensorrt()
    engine = engine_and_runtime[0] if isinstance(engine_and_runtime, tuple) else engine_and_runtime
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry = {
            "name": name,
            "mode": "input" if is_input else "output",
            "dtype": _dtype_name(engine.get_tensor_dtype(name)),
            "shape": list(engine.get_tensor_shape(name)),
        }
        if is_input:
            low, opt, high = engine.get_tensor_profile_shape(name, 0)
            entry["profile"] = {"min": list(low), "opt": list(opt), "max": list(high)}
        tensors.append(entry)
    return tensors


def network_io(network, profiles: dict) -> list[dict]:
    """:func:`engine_io`'s list for a parsed network and the plan's profiles (``profile.ShapeRange`` by input)."""
    tensors = []
    for mode, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for index in range(count):
            tensor = get(index)
            entry = {"name": tensor.name, "mode": mode, "dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape)}
            if mode == "input" and tensor.name in profiles:
                entry["profile"] = profiles[tensor.name].to_json()
            tensors.append(entry)
    return tensors


def _dtype_name(dtype) -> str:
    trt = import_tensorrt()
    try:
        return np.dtype(trt.nptype(dtype)).name
    except (TypeError, KeyError):
        return str(dtype).rsplit(".", 1)[-1].lower()


def runtime_info(cuda=None, gpu_required: bool = True) -> dict:
    """This machine as engine.json records it: TensorRT and CUDA versions, GPU, Jetson release.

    Without ``gpu_required`` (ahead-of-time builds of TensorRT for RTX) a machine without a GPU
    or CUDA driver is described with ``gpu`` and ``cuda`` None.
    """
    trt = import_tensorrt()
    try:
        api = cuda or cuda_api()
        try:
            device = api.device_info()
        finally:
            if cuda is None:
                api.close()
    except SegdeployError:
        if gpu_required:
            raise
        device = None
    info = {
        "tensorrt": trt.__version__,
        "edition": edition(),
        "cuda": None if device is None else {"runtime": device.pop("cuda_runtime"), "driver": device.pop("cuda_driver"),
                                             "driver_version": _driver_version()},
        "gpu": device,
        "jetson": None,
    }
    if is_jetson():
        l4t = l4t_release()
        info["jetson"] = {"l4t": l4t, "jetpack": jetpack_release(l4t)}
    return info


def _driver_version() -> str | None:
    """The kernel driver's version (``580.159.04``), where /proc tells it (desktop drivers)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \w+)?\s+([\d.]+)", text)
    return match.group(1) if match else None
