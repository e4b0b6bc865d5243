"""The TensorRT runner: one engine, device buffers allocated once, async execution on a stream.

Same interface as the ONNX Runtime and PyTorch runners (``infer(feed)`` on host arrays,
``time_on_device``, ``peak_device_memory_mb``). Buffers are sized for the profile's maximum
shapes when the runner is activated, so any input shape inside the profile runs without
reallocating; device memory comes from pycuda when installed, else Polygraphy's CUDA wrapper
(no torch). The engine's ``engine.json`` is checked against this machine's TensorRT version
and GPU before the engine is deserialized.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import BadInputError, SegdeployError
from ...fileio import sha256_file
from ..base import Runner
from . import loader
from .cuda import cuda_api
from .engine_json import check_engine, resolve_engine
from .plan import ENGINE_NAME, plugin_library_path


class EngineFromPath:
    """Loader: (engine, runtime, warnings) from a segdeploy engine file or folder, checked first."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def select_edition(self) -> None:
        """Make this process use the TensorRT edition (TensorRT or TensorRT for RTX) that built the engine."""
        loader.use_edition(resolve_engine(self.path)[1]["tensorrt"].get("edition", "tensorrt"))

    def __call__(self, cuda=None):
        engine_path, manifest = resolve_engine(self.path)
        loader.use_edition(manifest["tensorrt"].get("edition", "tensorrt"))
        loader.import_tensorrt()
        warnings = check_engine(manifest, engine_path, loader.runtime_info(cuda))
        plugins = []
        for entry in manifest["tensorrt"].get("plugins") or []:
            library = plugin_library_path()
            if not library.is_file():
                ops = ", ".join(manifest["tensorrt"].get("custom_ops") or [])
                raise BadInputError(f"{engine_path}: uses segdeploy's TensorRT plugins ({ops}), "
                                    f"and the plugin library {library} does not exist; build it from kernels/ or set "
                                    "SEGDEPLOY_TRT_PLUGIN_LIB")
            if entry.get("sha256") and sha256_file(library) != entry["sha256"]:
                warnings.append(f"{library}: differs from the plugin library the engine was built with")
            plugins.append(library)
        engine, runtime = loader.deserialize(engine_path.read_bytes(), plugins)
        return engine, runtime, manifest, warnings


def _check_rtx_device(cuda) -> None:
    """A clear refusal where no GPU can run a TensorRT for RTX engine (engine.json's check names the architecture)."""
    try:
        cuda.device_info()
    except SegdeployError as exc:
        raise SegdeployError(f"{exc}: TensorRT for RTX engines run on an RTX GPU (Turing to Blackwell) with NVIDIA's "
                             "driver, and none is usable here") from None


class TrtRunner(Runner):
    name = "trt"

    def __init__(self, engine_loader: EngineFromPath, cuda: str | None = None):
        self.engine_loader = engine_loader
        self.cuda_preference = cuda
        self.cuda = None
        self.engine = self.runtime = self.context = None
        self.manifest: dict = {}
        self.warnings: list[str] = []
        self.stream = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._profiles: dict[str, tuple] = {}
        self._dtypes: dict[str, np.dtype] = {}

    @classmethod
    def from_artifact(cls, onnx_path, manifest=None, engine=None, cuda: str | None = None, **_):
        """The engine beside an artifact's ONNX file (``segdeploy build`` writes it there), or ``engine``."""
        path = Path(engine) if engine else Path(onnx_path).parent / ENGINE_NAME
        if not path.exists():
            raise BadInputError(f"{path}: no TensorRT engine; build one with `segdeploy build {Path(onnx_path).parent}`")
        return cls(EngineFromPath(path), cuda=cuda)

    @classmethod
    def from_engine(cls, path, cuda: str | None = None):
        return cls(EngineFromPath(path), cuda=cuda)

    # ------------------------------------------------------------------ lifetime

    def activate(self):
        self.engine_loader.select_edition()
        trt = loader.import_tensorrt()
        self.cuda = cuda_api(self.cuda_preference)
        try:
            if loader.edition() == "rtx":
                _check_rtx_device(self.cuda)
            self.engine, self.runtime, self.manifest, self.warnings = self.engine_loader(self.cuda)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise SegdeployError("TensorRT could not create an execution context (out of device memory?)")
            self.stream = self.cuda.create_stream()
            self._allocate(trt)
        except BaseException:
            self.deactivate()
            raise

    def _allocate(self, trt):
        engine, context = self.engine, self.context
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
                self._profiles[name] = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            else:
                self._outputs.append(name)
        for name in self._inputs:
            largest = self._profiles[name][2]
            if not context.set_input_shape(name, largest):
                raise SegdeployError(f"TensorRT refused the profile's maximum shape {list(largest)} for input {name!r}")
            self._bind(name, largest)
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise SegdeployError(f"output {name!r} has a data-dependent shape {list(shape)}; segdeploy's runner "
                                     "needs shapes known from the inputs")
            self._bind(name, shape)

    def _bind(self, name, shape):
        nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
        pointer = self.cuda.malloc(nbytes)
        self._buffers[name] = (pointer, nbytes)
        if not self.context.set_tensor_address(name, pointer):
            raise SegdeployError(f"TensorRT refused the device address of {name!r}")

    def deactivate(self):
        if self.cuda is not None:
            if self.stream is not None:
                self.cuda.synchronize(self.stream)
            for pointer, _ in self._buffers.values():
                self.cuda.free(pointer)
            if self.stream is not None:
                self.cuda.destroy_stream(self.stream)
        self._buffers.clear()
        self._inputs.clear()
        self._outputs.clear()
        self.stream = None
        self.context = self.engine = self.runtime = None  # context before engine before runtime
        if self.cuda is not None:
            self.cuda.close()
            self.cuda = None

    # ------------------------------------------------------------------ running

    def _stage(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Set the input shapes and queue the host-to-device copies; returns the host arrays to keep alive."""
        if len(feed) == 1 and len(self._inputs) == 1 and self._inputs[0] not in feed:
            feed = {self._inputs[0]: next(iter(feed.values()))}
        missing = [n for n in self._inputs if n not in feed]
        if missing:
            raise BadInputError(f"the engine's inputs {missing} were not given (given: {sorted(feed)})")
        staged = []
        for name in self._inputs:
            array = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            low, _, high = self._profiles[name]
            if array.ndim != len(low) or any(not lo <= s <= hi for lo, s, hi in zip(low, array.shape, high)):
                raise BadInputError(
                    f"input {name!r} of shape {list(array.shape)} is outside the engine's profile "
                    f"{list(low)} .. {list(high)}; rebuild with `segdeploy build --batch/--min/--max` to cover it")
            if not self.context.set_input_shape(name, array.shape):
                raise SegdeployError(f"TensorRT refused input shape {list(array.shape)} for {name!r}")
            self.cuda.copy_to_device(self._buffers[name][0], array, self.stream)
            staged.append(array)
        return staged

    def _execute(self):
        if not self.context.execute_async_v3(self.stream):
            raise SegdeployError("TensorRT's execute_async_v3 failed (its log above says why)")

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        staged = self._stage(feed)
        self._execute()
        outputs = {}
        for name in self._outputs:
            host = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name])
            self.cuda.copy_to_host(host, self._buffers[name][0], self.stream)
            outputs[name] = host
        self.cuda.synchronize(self.stream)
        del staged
        return outputs

    def output_copy(self) -> str:
        return "device-to-host copy of every output (the engine's own dtypes) after the engine, synchronised: timed"

    def time_on_device(self, feed: dict[str, np.ndarray], iterations: int) -> list[float] | None:
        """GPU time of the engine alone (inputs copied once beforehand), per run, from CUDA events."""
        staged = self._stage(feed)
        self._execute()  # warm, and the inputs are in place from here on
        start, end = self.cuda.create_event(), self.cuda.create_event()
        times = []
        try:
            for _ in range(iterations):
                self.cuda.record_event(start, self.stream)
                self._execute()
                self.cuda.record_event(end, self.stream)
                times.append(self.cuda.elapsed_ms(start, end))
        finally:
            self.cuda.synchronize(self.stream)
            self.cuda.destroy_event(start)
            self.cuda.destroy_event(end)
        del staged
        return times

    def peak_device_memory_mb(self) -> float | None:
        """The I/O buffers plus the engine's activation memory (TensorRT allocates it per context)."""
        if self.engine is None:
            return None
        activations = getattr(self.engine, "device_memory_size_v2", None)
        if activations is None:
            activations = getattr(self.engine, "device_memory_size", 0)
        return (sum(n for _, n in self._buffers.values()) + int(activations)) / 2**20

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)
