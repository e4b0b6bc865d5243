"""Device memory, streams and events for the TensorRT runner, without torch.

Two implementations of one small interface:

* ``pycuda`` when it is installed (common on Jetson): the device's *primary* context is
  retained and made current, the context the CUDA runtime (and so TensorRT) uses;
* otherwise Polygraphy's CUDA wrapper, which loads ``libcudart`` through ctypes; events and
  device queries call the same library directly.

Pointers, streams and events are plain integers, which is what TensorRT's
``set_tensor_address`` and ``execute_async_v3`` take.
"""

from __future__ import annotations

import abc
import ctypes

import numpy as np

from ...errors import MissingDependencyError, SegdeployError

# cudaDeviceAttr values (CUDA runtime API, stable since CUDA 5).
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
_ATTR_MULTIPROCESSORS = 16
_MEMCPY_HOST_TO_DEVICE = 1
_MEMCPY_DEVICE_TO_HOST = 2


def format_cuda_version(value: int) -> str:
    """12060 -> "12.6" (the integer cudaRuntimeGetVersion/cudaDriverGetVersion return)."""
    return f"{value // 1000}.{value % 1000 // 10}"


class CudaApi(abc.ABC):
    """The calls the TensorRT runner needs; each method takes and returns plain integers."""

    name = "cuda"

    @abc.abstractmethod
    def malloc(self, nbytes: int) -> int:
        ...

    @abc.abstractmethod
    def free(self, ptr: int) -> None:
        ...

    @abc.abstractmethod
    def copy_to_device(self, ptr: int, array: np.ndarray, stream: int) -> None:
        ...

    @abc.abstractmethod
    def copy_to_host(self, array: np.ndarray, ptr: int, stream: int) -> None:
        ...

    @abc.abstractmethod
    def create_stream(self) -> int:
        ...

    @abc.abstractmethod
    def synchronize(self, stream: int) -> None:
        ...

    @abc.abstractmethod
    def destroy_stream(self, stream: int) -> None:
        ...

    @abc.abstractmethod
    def create_event(self):
        ...

    @abc.abstractmethod
    def record_event(self, event, stream: int) -> None:
        ...

    @abc.abstractmethod
    def elapsed_ms(self, start, end) -> float:
        """Milliseconds between two recorded events (waits for ``end``)."""
        ...

    @abc.abstractmethod
    def destroy_event(self, event) -> None:
        ...

    @abc.abstractmethod
    def device_info(self) -> dict:
        """``{"name", "compute_capability", "multiprocessors", "cuda_runtime", "cuda_driver"}``."""
        ...

    def close(self) -> None:
        """Release what the API object itself holds (a pushed context)."""


class PolygraphyCuda(CudaApi):
    """Polygraphy's ctypes wrapper around ``libcudart`` (the runtime API)."""

    name = "polygraphy"

    def __init__(self):
        try:
            from polygraphy import cuda
            from polygraphy.exception import PolygraphyException
        except ImportError:
            raise MissingDependencyError("polygraphy", why="the TensorRT runner uses its CUDA wrapper when pycuda is absent") from None
        try:
            self._cuda = cuda.wrapper()
        except (OSError, PolygraphyException) as exc:
            raise SegdeployError(f"the CUDA runtime library (libcudart) could not be loaded: {exc}") from None
        self._lib = self._cuda.handle

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            message = ""
            try:
                self._lib.cudaGetErrorString.restype = ctypes.c_char_p
                message = self._lib.cudaGetErrorString(ctypes.c_int(status)).decode()
            except (AttributeError, OSError):
                pass
            raise SegdeployError(f"CUDA error {status} in {what}{': ' + message if message else ''}")

    def malloc(self, nbytes):
        return self._cuda.malloc(max(int(nbytes), 1))

    def free(self, ptr):
        self._cuda.free(ptr)

    def copy_to_device(self, ptr, array, stream):
        from polygraphy.cuda import MemcpyKind

        array = np.ascontiguousarray(array)
        self._cuda.memcpy(ptr, array.ctypes.data, array.nbytes, MemcpyKind.HostToDevice, stream)

    def copy_to_host(self, array, ptr, stream):
        from polygraphy.cuda import MemcpyKind

        assert array.flags.c_contiguous
        self._cuda.memcpy(array.ctypes.data, ptr, array.nbytes, MemcpyKind.DeviceToHost, stream)

    def create_stream(self):
        return self._cuda.create_stream()

    def synchronize(self, stream):
        self._cuda.stream_synchronize(stream)

    def destroy_stream(self, stream):
        self._cuda.destroy_stream(stream)

    def create_event(self):
        event = ctypes.c_void_p()
        self._check(self._lib.cudaEventCreate(ctypes.byref(event)), "cudaEventCreate")
        return event.value

    def record_event(self, event, stream):
        self._check(self._lib.cudaEventRecord(ctypes.c_void_p(event), ctypes.c_void_p(stream)), "cudaEventRecord")

    def elapsed_ms(self, start, end):
        self._check(self._lib.cudaEventSynchronize(ctypes.c_void_p(end)), "cudaEventSynchronize")
        ms = ctypes.c_float()
        self._check(self._lib.cudaEventElapsedTime(ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)),
                    "cudaEventElapsedTime")
        return float(ms.value)

    def destroy_event(self, event):
        self._lib.cudaEventDestroy(ctypes.c_void_p(event))

    def device_info(self):
        lib = self._lib
        device = ctypes.c_int()
        self._check(lib.cudaGetDevice(ctypes.byref(device)), "cudaGetDevice")

        def attribute(code):
            value = ctypes.c_int()
            self._check(lib.cudaDeviceGetAttribute(ctypes.byref(value), ctypes.c_int(code), device), "cudaDeviceGetAttribute")
            return value.value

        runtime, driver = ctypes.c_int(), ctypes.c_int()
        self._check(lib.cudaRuntimeGetVersion(ctypes.byref(runtime)), "cudaRuntimeGetVersion")
        self._check(lib.cudaDriverGetVersion(ctypes.byref(driver)), "cudaDriverGetVersion")
        return {
            "name": self._device_name(device),
            "compute_capability": f"{attribute(_ATTR_CC_MAJOR)}.{attribute(_ATTR_CC_MINOR)}",
            "multiprocessors": attribute(_ATTR_MULTIPROCESSORS),
            "cuda_runtime": format_cuda_version(runtime.value),
            "cuda_driver": format_cuda_version(driver.value),
        }

    def _device_name(self, device) -> str | None:
        # cudaDeviceProp begins with ``char name[256]`` in every CUDA release; the struct's size
        # varies, so a generous buffer takes any version's. CUDA 12 exports the _v2 entry point.
        buffer = ctypes.create_string_buffer(1 << 14)
        for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            function = getattr(self._lib, symbol, None)
            if function is not None and function(buffer, device) == 0:
                return buffer.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
        return None


class PycudaCuda(CudaApi):
    """pycuda (driver API) on the device's primary context, shared with TensorRT."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda

        self._cuda = cuda
        cuda.init()
        self._device = cuda.Device(device)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._allocations: dict[int, object] = {}
        self._streams: dict[int, object] = {}

    def malloc(self, nbytes):
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr):
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def copy_to_device(self, ptr, array, stream):
        self._cuda.memcpy_htod_async(ptr, np.ascontiguousarray(array), self._streams[stream])

    def copy_to_host(self, array, ptr, stream):
        self._cuda.memcpy_dtoh_async(array, ptr, self._streams[stream])

    def create_stream(self):
        stream = self._cuda.Stream()
        self._streams[stream.handle] = stream
        return stream.handle

    def synchronize(self, stream):
        self._streams[stream].synchronize()

    def destroy_stream(self, stream):
        self._streams.pop(stream, None)

    def create_event(self):
        return self._cuda.Event()

    def record_event(self, event, stream):
        event.record(self._streams[stream])

    def elapsed_ms(self, start, end):
        end.synchronize()
        return float(start.time_till(end))

    def destroy_event(self, event):
        pass

    def device_info(self):
        major, minor = self._device.compute_capability()
        attrs = self._cuda.device_attribute
        return {
            "name": self._device.name(),
            "compute_capability": f"{major}.{minor}",
            "multiprocessors": self._device.get_attribute(attrs.MULTIPROCESSOR_COUNT),
            "cuda_runtime": ".".join(str(v) for v in self._cuda.get_version()[:2]),
            "cuda_driver": format_cuda_version(self._cuda.get_driver_version()),
        }

    def close(self):
        for allocation in self._allocations.values():
            allocation.free()
        self._allocations.clear()
        self._streams.clear()
        try:
            self._context.pop()
        except self._cuda.LogicError:
            pass


def cuda_api(prefer: str | None = None) -> CudaApi:
    """pycuda when installed (or ``prefer="pycuda"``), else Polygraphy's wrapper (``prefer="polygraphy"``)."""
    if prefer not in (None, "pycuda", "polygraphy"):
        raise ValueError(f"unknown CUDA API {prefer!r}")
    if prefer != "polygraphy":
        try:
            import pycuda.driver  # noqa: F401 (a probe)
        except ImportError:
            if prefer == "pycuda":
                raise MissingDependencyError("pycuda", why="asked for as the TensorRT runner's CUDA API") from None
        else:
            return PycudaCuda()
    return PolygraphyCuda()
