"""A real Triton server for the tests: the ``tritonserver`` binary that nvidia-pytriton bundles.

API (stable; the serving tests and benchmarks use it)::

    from triton_harness import skip_reason, triton_server
    if (reason := skip_reason()): pytest.skip(reason)
    with triton_server(repo_dir, timeout=120) as server:
        server.http_url, server.grpc_url, server.metrics_url   # "127.0.0.1:PORT" each (free ports)
        server.http_client() / server.grpc_client()            # tritonclient clients on them
        server.log()                                           # everything the server printed so far
        server.statistics(model)                               # the model's inference statistics (dict)

``triton_server`` starts the server on 127.0.0.1 in its own process group, waits (bounded by
``timeout``) until the server and every model are ready, and raises ``ServerFailed`` with the
server's log when it exits or times out first (a model that fails to load: Triton's message is in
it). On leaving, the group gets SIGTERM, then SIGKILL after ``stop_timeout``: no orphan process.
``skip_reason()`` says why the bundled server cannot run here (None: it can).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from segdeploy.serve.server import cannot_run_reason, prepare_backends, server_command, server_environment


class ServerFailed(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log, ``pid`` the server's
    process (and process group) id."""

    def __init__(self, message: str, pid: int):
        super().__init__(message)
        self.pid = pid


def skip_reason() -> str | None:
    """Why the bundled tritonserver cannot run here (platform, glibc, missing package), or None."""
    reason = cannot_run_reason()
    if reason is None:
        try:
            import tritonclient.grpc  # noqa: F401
            import tritonclient.http  # noqa: F401
        except ImportError:
            return "tritonclient is not installed (pip install 'segdeploy[serve]')"
    return reason


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (the sockets are held until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class RunningServer:
    process: subprocess.Popen
    log_path: Path
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def http_client(self, concurrency: int = 1):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url, concurrency=concurrency, network_timeout=120.0)

    def grpc_client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc_url)

    def statistics(self, model: str) -> dict:
        """The model's statistics (``model_stats[0]`` of Triton's statistics extension)."""
        with self.http_client() as client:
            return client.get_inference_statistics(model)["model_stats"][0]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False


@contextlib.contextmanager
def triton_server(repository, timeout: float = 180.0, stop_timeout: float = 20.0, extra: tuple[str, ...] = ()):
    """A running tritonserver on ``repository`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="segdeploy-triton-") as work:
        work = Path(work)
        backends = prepare_backends(work / "backends")
        http_port, grpc_port, metrics_port = free_ports(3)
        command = server_command(repository, backends, http_port=http_port, grpc_port=grpc_port,
                                 metrics_port=metrics_port, address="127.0.0.1", extra=extra)  # fmt: skip
        log_path = work / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=server_environment(), start_new_session=True)  # fmt: skip
        server = RunningServer(process, log_path, http_port, grpc_port, metrics_port)
        try:
            deadline = time.monotonic() + timeout
            while not server.ready():
                if process.poll() is not None:
                    raise ServerFailed(f"tritonserver exited with code {process.returncode} before it was ready:\n{server.log()}",
                                       process.pid)
                if time.monotonic() > deadline:
                    raise ServerFailed(f"tritonserver was not ready within {timeout:.0f} s:\n{server.log()}", process.pid)
                time.sleep(0.25)
            yield server
        finally:
            stop(process, stop_timeout)


def stop(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the server's process group (the server and its Python stubs), SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # the stubs may outlive the server by a moment: whatever is left of the group goes too, and is waited for
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
