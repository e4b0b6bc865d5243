"""TritonRunner: an artifact's model served by a running Triton server, called from the client side.

``infer(feed)`` sends one request (float32 NCHW in, the server's outputs back as numpy) over HTTP or
gRPC; ``clone()`` gives another runner with its own connection, for concurrent clients;
``statistics()`` reads the server's counters of the model (requests, executions: batches merged by
dynamic batching).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from ...errors import BadInputError
from ...optional import require
from ..base import Runner

PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
#: numpy dtype name -> Triton datatype.
TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int32": "INT32", "int64": "INT64"}


@dataclass(frozen=True)
class ServerAddress:
    protocol: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """host:port, as tritonclient takes it (no scheme)."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.url}"


def parse_url(url: str) -> ServerAddress:
    """``http://host:8000``, ``grpc://host:8001`` or ``host:port`` (HTTP) -> ServerAddress; BadInputError otherwise."""
    text = url if "://" in url else f"http://{url}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in PROTOCOLS or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise BadInputError(f"Triton URL {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    return ServerAddress(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])


def client_module(protocol: str):
    return require(f"tritonclient.{protocol}", extra="serve", why="needed to talk to a Triton server")


class TritonRunner(Runner):
    name = "triton"

    def __init__(self, address: ServerAddress, model: str, timeout_s: float = 60.0):
        self.address = address
        self.model = model
        self.timeout_s = timeout_s
        self.client = None
        self.inputs: dict[str, str] = {}
        self.outputs: list[str] = []

    @classmethod
    def from_artifact(cls, onnx_path, manifest=None, url: str = "http://127.0.0.1:8000", model: str | None = None, **_):
        if not model:
            raise BadInputError("the triton backend needs the name of the served model (--triton-model)")
        return cls(parse_url(url), model)

    def clone(self) -> TritonRunner:
        """Another runner on its own connection (tritonclient's clients are not shared between threads)."""
        return TritonRunner(self.address, self.model, self.timeout_s)

    def activate(self) -> None:
        client = client_module(self.address.protocol)
        exceptions = require("tritonclient.utils", extra="serve", why="needed to talk to a Triton server")
        try:
            if self.address.protocol == "http":
                self.client = client.InferenceServerClient(self.address.url, connection_timeout=self.timeout_s,
                                                           network_timeout=self.timeout_s)
            else:
                self.client = client.InferenceServerClient(self.address.url)
            live = self.client.is_server_ready()
        except (exceptions.InferenceServerException, OSError) as exc:
            raise BadInputError(f"{self.address}: no Triton server answers there ({_message(exc)})") from None
        if not live:
            raise BadInputError(f"{self.address}: the Triton server is not ready")
        try:
            ready = self.client.is_model_ready(self.model)
            metadata = self.client.get_model_metadata(self.model) if ready else None
        except exceptions.InferenceServerException as exc:
            raise BadInputError(f"{self.address}: model {self.model!r}: {_message(exc)}") from None
        if not ready:
            raise BadInputError(f"{self.address}: model {self.model!r} is not loaded (is it in the server's repository?)")
        if self.address.protocol == "grpc":  # a protobuf message
            self.inputs = {i.name: i.datatype for i in metadata.inputs}
            self.outputs = [o.name for o in metadata.outputs]
        else:
            self.inputs = {i["name"]: i["datatype"] for i in metadata["inputs"]}
            self.outputs = [o["name"] for o in metadata["outputs"]]

    def deactivate(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        client = client_module(self.address.protocol)
        unknown = sorted(set(feed) - set(self.inputs))
        if unknown:
            raise BadInputError(f"{self.address}: model {self.model!r} has no input {', '.join(unknown)} "
                                f"(its inputs: {', '.join(self.inputs)})")
        inputs = []
        for name, array in feed.items():
            tensor = client.InferInput(name, list(array.shape), TRITON_DTYPES[array.dtype.name])
            if self.address.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requested = [client.InferRequestedOutput(name) for name in self.outputs]
        result = self.client.infer(self.model, inputs, outputs=requested)
        return {name: result.as_numpy(name) for name in self.outputs}

    def output_copy(self) -> str:
        return f"outputs sent by the server over {self.address.protocol.upper()} into host memory (inside the timed request)"

    def statistics(self) -> dict:
        """The server's counters for this model: requests (``inference_count``: images, one per batch item)
        and executions (``execution_count``: model runs, fewer when dynamic batching merged requests)."""
        if self.address.protocol == "grpc":
            stats = self.client.get_inference_statistics(self.model, as_json=True)
        else:
            stats = self.client.get_inference_statistics(self.model)
        model = stats["model_stats"][0]
        return {"inference_count": int(model.get("inference_count", 0)),
                "execution_count": int(model.get("execution_count", 0)),
                "batch_sizes": {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model.get("batch_stats", [])}}


def _message(exc) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
