"""The Triton server that the ``nvidia-pytriton`` wheel bundles: found, prepared and started here.

The wheel (``pip install 'segdeploy[serve]'``) ships ``tritonserver`` with the Python backend only
and one Python-backend stub per Python version (x86-64 Linux, glibc >= 2.35). To run a
repository written by segdeploy/serve/triton.py, the server needs:

- a backend folder whose ``python/triton_python_backend_stub`` is the stub of *this* Python
  (``prepare_backends`` copies it there, as pytriton itself does);
- ``LD_LIBRARY_PATH``: the wheel's libraries and this Python's ``libpython3.X.so`` (the stub
  embeds the interpreter);
- ``PYTHONPATH``: this interpreter's ``sys.path``, so the stub imports segdeploy, numpy, PIL and
  onnxruntime from the environment segdeploy is installed in.

``server_environment`` and ``server_command`` give both; ``cannot_run_reason`` says why the
bundled server cannot run here (None when it can).
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, MissingDependencyError

MIN_GLIBC = (2, 35)


@dataclass(frozen=True)
class BundledServer:
    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_bundled_server() -> BundledServer:
    """The wheel's server and this Python version's stub; MissingDependencyError without the wheel."""
    try:
        import pytriton
    except ImportError:
        raise MissingDependencyError("nvidia-pytriton", extra="serve", why="it bundles the tritonserver binary") from None
    root = Path(pytriton.__file__).resolve().parent
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    server = BundledServer(binary=root / "tritonserver" / "bin" / "tritonserver", libs=root.parent / "nvidia_pytriton.libs",
                           python_backend=root / "tritonserver" / "backends" / "python",
                           stub=root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub")  # fmt: skip
    for path in (server.binary, server.python_backend, server.stub):
        if not path.exists():
            raise BadInputError(f"{path}: missing from the nvidia-pytriton install (Python {version} stub, server binary); "
                                "reinstall it: pip install 'segdeploy[serve]'")  # fmt: skip
    return server


def libpython_dir() -> Path | None:
    """The folder of this interpreter's shared libpython (None: a static build, e.g. some conda Pythons)."""
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        folder = Path(sysconfig.get_config_var("LIBDIR") or "")
        if (folder / sysconfig.get_config_var("LDLIBRARY")).exists():
            return folder
    return None


def cannot_run_reason() -> str | None:
    """Why the bundled server cannot run on this machine, or None."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the bundled tritonserver is built for x86-64 Linux; this is {sys.platform} {platform.machine()}"
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < MIN_GLIBC:
        return f"the bundled tritonserver needs glibc >= {'.'.join(map(str, MIN_GLIBC))}; this machine has {libc} {version}"
    try:
        find_bundled_server()
    except (MissingDependencyError, BadInputError) as exc:
        return str(exc)
    tag = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if libpython_dir() is None and ctypes.util.find_library(tag) is None:
        return f"the Python backend's stub embeds lib{tag}.so, and this Python ({sys.executable}) is a static build"
    return None


def prepare_backends(folder: str | os.PathLike) -> Path:
    """A backend folder at ``folder`` with the Python backend and this Python's stub; returns it.

    Kept when it already holds the same files (``serve start`` reuses one in ~/.cache), else built
    beside it and renamed into place, so that servers starting together never see half a copy.
    """
    server = find_bundled_server()
    backends = Path(folder)
    python = backends / "python"
    sources = {**{p.name: p for p in server.python_backend.iterdir() if p.is_file()}, "triton_python_backend_stub": server.stub}
    if all((python / name).is_file() and (python / name).stat().st_size == src.stat().st_size for name, src in sources.items()):
        return backends
    backends.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".python.", dir=backends))
    for name, source in sources.items():
        shutil.copy2(source, staging / name)
    if python.exists():
        shutil.rmtree(python, ignore_errors=True)
    try:
        os.rename(staging, python)
    except OSError:  # another process put its copy there first
        shutil.rmtree(staging, ignore_errors=True)
    return backends


def server_environment(base: dict | None = None) -> dict:
    """The environment the server (and the Python stubs it starts) needs: libraries and this sys.path."""
    server = find_bundled_server()
    env = dict(os.environ if base is None else base)
    libs = [str(p) for p in (libpython_dir(), server.libs) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*filter(None, [env.get("PYTHONPATH")]), *paths]))
    return env


def server_command(repository, backends, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                   address: str = "0.0.0.0", extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The ``tritonserver`` command line for ``repository`` with the backend folder ``backends``."""
    server = find_bundled_server()
    return [str(server.binary), f"--model-repository={repository}", f"--backend-directory={backends}",
            f"--http-address={address}", f"--http-port={http_port}", f"--grpc-address={address}",
            f"--grpc-port={grpc_port}", f"--metrics-address={address}", f"--metrics-port={metrics_port}",
            "--allow-gpu-metrics=false", "--strict-readiness=true", "--exit-on-error=true",
            # one shared-memory prefix per server process: several servers on one machine do not collide
            f"--backend-config=python,shm-region-prefix-name=segdeploy_{os.getpid()}_{http_port}_", *extra]  # fmt: skip
