"""PyTorch eager execution: the reference that exported graphs are checked against, and on a
GPU the FP32/FP16/CUDA-graph baselines that engines are compared with.

The rebuilt module ends in logits; an artifact whose graph ends in a deployment head
(``probabilities``: Softmax/Sigmoid, ``labels``: argmax or threshold cast to uint8/int32) has the
same head applied on the device, so the outputs - and what a GPU copies back - are the graph's."""

from __future__ import annotations

import numpy as np

from ...crf import CRFParams, dense_crf
from ...errors import BadInputError
from ...models.loading import build_model
from ...optional import require
from ...outputs import Head
from ..base import Runner


def import_torch():
    return require("torch", extra="export", why="needed for the PyTorch backend")


class ModelFromManifest:
    """Loader: rebuild the exported ``nn.Module`` from the manifest (name, arguments, checkpoint, seed)."""

    def __init__(self, manifest: dict):
        if not manifest or "model" not in manifest:
            raise BadInputError("the torch backend needs a segdeploy artifact folder (its manifest names the model)")
        self.model_info = manifest["model"]

    def __call__(self):
        info = self.model_info
        return build_model(info["name"], info.get("args", {}), checkpoint=info.get("checkpoint"), seed=info.get("seed", 0))


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model_loader, output_names=("logits",), threads: int | None = None, device: str = "cpu",
                 half: bool = False, cuda_graph: bool = False, crf: dict | None = None, head: Head | None = None,
                 labels_dtype: str = "uint8"):
        self.model_loader = model_loader
        #: The graph's head, applied to the module's prediction (logits); None: the logits as they are.
        self.head = head
        self.labels_dtype = labels_dtype
        #: The manifest's ``crf`` section: refine the logits with segdeploy's CRF kernel, as the
        #: exported graph's DenseCRF node does.
        self.crf = crf
        #: A CRF graph exported with ``--head labels`` outputs the CRF's labels alone.
        self.crf_labels_only = False
        self.output_names = tuple(output_names)
        #: The prediction's place among the outputs (the head's output replaced the module's logits there).
        self.prediction_index = 0
        self.threads = threads
        self.device = device
        self.half = half
        self.cuda_graph = cuda_graph
        self.model = None
        # input shape -> (graph, static input, static outputs): a CUDA graph replays one shape.
        self._graphs: dict = {}

    @classmethod
    def from_artifact(cls, onnx_path, manifest=None, threads: int | None = None, **options):
        manifest = manifest or {}
        crf = manifest.get("crf")
        output = manifest.get("output", {})
        outputs = ["logits"] if crf else output.get("all") or ["logits"]
        head = None if crf else Head.from_manifest(manifest)
        if head is not None and head.name == "logits":
            head = None
        runner = cls(ModelFromManifest(manifest), output_names=outputs, threads=threads, crf=crf, head=head,
                     labels_dtype=output.get("dtype", "uint8"), **options)
        if output.get("name") in outputs:
            runner.prediction_index = outputs.index(output["name"])
        runner.crf_labels_only = bool(crf) and output.get("head") == "labels"
        return runner

    def activate(self):
        torch = import_torch()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BadInputError(f"backend {self.name} needs a CUDA GPU and torch sees none")
        if self.threads:
            torch.set_num_threads(self.threads)
        model = self.model_loader().eval().to(self.device)
        self.model = model.half() if self.half else model
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def deactivate(self):
        self.model = None
        self._graphs.clear()

    def _forward(self, images) -> tuple:
        """The module's outputs, the prediction through the graph's deployment head."""
        out = self.model(images)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if self.head is None:
            return out
        i = self.prediction_index
        return (*out[:i], self._apply_head(out[i]), *out[i + 1:])

    def _apply_head(self, logits):
        """What the graph's head makes of the logits: probabilities, or labels (N, H, W) of the manifest's dtype."""
        torch = import_torch()
        head = self.head
        scores = logits
        if head.activation == "softmax":
            scores = torch.softmax(logits, dim=1)
        elif head.activation == "sigmoid":
            scores = torch.sigmoid(logits)
        if head.has_scores:
            return scores
        dtype = torch.int32 if self.labels_dtype == "int32" else torch.uint8
        if head.kind == "binary":
            return (scores[:, 0] > head.threshold).to(dtype)
        return scores.argmax(dim=1).to(dtype)

    def _run(self, images):
        """Model outputs as a tuple, for device-resident ``images`` of the model's dtype."""
        torch = import_torch()
        if not self.cuda_graph:
            with torch.inference_mode():
                return self._forward(images)
        key = tuple(images.shape)
        if key not in self._graphs:
            static_in = images.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(3):  # warm up kernels and allocator outside the capture
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(images)
        graph.replay()
        return static_out

    def _to_device(self, array: np.ndarray):
        torch = import_torch()
        tensor = torch.from_numpy(array).to(self.device, non_blocking=False)
        return tensor.half() if self.half else tensor

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = next(iter(feed.values()))
        outs = self._run(self._to_device(images))
        # .cpu() is the device-to-host copy on a GPU (inside the timed run); labels keep their integer dtype.
        outputs = {name: (t.float() if t.is_floating_point() else t).cpu().numpy() for name, t in zip(self.output_names, outs)}
        if not self.crf:
            return outputs
        probabilities, labels = dense_crf(outputs["logits"], feed[self.crf["image_input"]], CRFParams(**self.crf["params"]))
        if self.crf_labels_only:  # the graph's CRF hands back its labels alone, in the manifest's dtype
            return {"labels": labels.astype(self.labels_dtype)}
        return {"probabilities": probabilities, "labels": labels}

    def output_copy(self) -> str:
        if not self.device.startswith("cuda"):
            return "none: torch on the CPU computes the outputs in host memory"
        return "device-to-host copy of every output (.cpu()) inside the timed run"

    def time_on_device(self, feed: dict[str, np.ndarray], iterations: int) -> list[float] | None:
        if not self.device.startswith("cuda"):
            return None
        torch = import_torch()
        (images,) = feed.values()
        images = self._to_device(images)
        self._run(images)
        times = []
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._run(images)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times

    def peak_device_memory_mb(self) -> float | None:
        if not self.device.startswith("cuda"):
            return None
        return import_torch().cuda.max_memory_allocated() / 2**20
