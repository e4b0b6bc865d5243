"""The Python-backend models of a served repository (segdeploy/serve/triton.py writes their configs).

Each generated ``model.py`` imports one class here as ``TritonPythonModel``; it reads the
``manifest.json`` copied into its version folder and computes exactly what ``segdeploy infer``
computes: ``Preprocess`` decodes and normalises as segdeploy.preprocess does, ``OnnxModel`` runs the
network with segdeploy's ONNX Runtime runner, ``Postprocess`` reads the output with the manifest's
``outputs.Head`` and resizes the labels to the image's own size as segdeploy.infer does.

A bad request gets an error response naming the problem (the other requests of the batch are
answered), so the server keeps serving. ``triton_python_backend_utils`` exists only inside
Triton's Python stub, hence imported in ``initialize``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..infer import labels_at, network_size, resize_channels
from ..manifest import MANIFEST_NAME, read_manifest
from ..outputs import Head
from ..preprocess import decode_image, normalize, resize
from .triton import IMAGE_BYTES, LABELS, ORIGINAL_SIZE, PROBABILITIES, RGB


class _Step:
    """What every step shares: the utilities module, its config, its manifest, per-request errors."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.config = json.loads(args["model_config"])
        self.folder = Path(args["model_repository"]) / str(args["model_version"])
        self.manifest = read_manifest(self.folder / MANIFEST_NAME)
        self.output_types = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config["output"]}

    def input(self, request, name: str) -> np.ndarray | None:
        """The request's tensor ``name``, batch first (the pre/post steps always batch; a model step that does
        not takes the graph's full shape, its fixed batch first too)."""
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def response(self, outputs: dict[str, np.ndarray]):
        tensors = [self.pb.Tensor(name, np.ascontiguousarray(array, dtype=self.output_types[name])) for name, array in outputs.items()]
        return self.pb.InferenceResponse(output_tensors=tensors)

    def error(self, message: str):
        return self.pb.InferenceResponse(error=self.pb.TritonError(f"{self.config['name']}: {message}"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.response(self.run(request)))
            except BadInputError as exc:
                responses.append(self.error(str(exc)))
        return responses

    def run(self, request) -> dict[str, np.ndarray]:
        raise NotImplementedError


class Preprocess(_Step):
    """IMAGE_BYTES (encoded images, (N, 1) bytes) or RGB (uint8 (N, H, W, 3)) -> the network's input and ORIGINAL_SIZE."""

    def initialize(self, args):
        super().initialize(args)
        self.spec = self.manifest["input"]
        self.output_name = self.config["output"][0]["name"]
        # a graph ending in the dense CRF also takes the resized picture, as segdeploy.infer feeds it
        self.crf_input = (self.manifest.get("crf") or {}).get("image_input")

    def run(self, request) -> dict[str, np.ndarray]:
        pictures = self.pictures(request)
        shapes = {p.shape[:2] for p in pictures}
        if len(shapes) > 1:
            raise BadInputError(f"the images of one request differ in size ({sorted(shapes)}): send one image per request")
        shape = shapes.pop()
        height, width = network_size(self.spec, shape)
        resized = np.stack([resize(p, height, width) for p in pictures])
        outputs = {self.output_name: normalize(resized, self.spec), ORIGINAL_SIZE: np.tile(np.asarray(shape, np.int32), (len(pictures), 1))}
        if self.crf_input:
            outputs[self.crf_input] = resized
        return outputs

    def pictures(self, request) -> list[np.ndarray]:
        encoded, rgb = self.input(request, IMAGE_BYTES), self.input(request, RGB)
        given = [name for name, array in ((IMAGE_BYTES, encoded), (RGB, rgb)) if array is not None and array.size]
        if len(given) != 1:
            raise BadInputError(f"send exactly one of {IMAGE_BYTES} (an encoded image) or {RGB} (uint8 H x W x 3); "
                                f"got {', '.join(given) or 'neither (or an empty tensor)'}")  # fmt: skip
        if encoded is not None and encoded.size:
            pictures = []
            for i, item in enumerate(encoded.reshape(len(encoded), -1)[:, 0]):
                data = item if isinstance(item, bytes) else bytes(item)
                if not data:
                    raise BadInputError(f"{IMAGE_BYTES}[{i}]: empty (no image bytes)")
                pictures.append(decode_image(io.BytesIO(data), f"{IMAGE_BYTES}[{i}]"))
            return pictures
        if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3 or 0 in rgb.shape:
            raise BadInputError(f"{RGB}: expected uint8 (H, W, 3) pictures, got {rgb.dtype} {list(rgb.shape[1:])}")
        return list(rgb)


class OnnxModel(_Step):
    """The network run by segdeploy's ONNX Runtime runner; the requests of a dynamic batch run as one batch
    when their shapes agree."""

    def initialize(self, args):
        super().initialize(args)
        from ..backend.onnxrt.runner import OnnxrtRunner

        parameters = self.config.get("parameters") or {}
        threads = int((parameters.get("threads") or {}).get("string_value") or 0) or None
        self.runner = OnnxrtRunner.from_artifact(self.folder / "model.onnx", self.manifest, threads=threads)
        self.runner.activate()
        self.input_names = [i["name"] for i in self.config["input"]]

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for index, request in enumerate(requests):
            feed = {name: self.input(request, name) for name in self.input_names}
            if any(array is None for array in feed.values()):
                responses[index] = self.error(f"missing input: expected {', '.join(self.input_names)}")
                continue
            key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in feed.items())
            groups.setdefault(key, []).append((index, feed))
        for members in groups.values():
            batch = {name: np.concatenate([feed[name] for _, feed in members]) for name in self.input_names}
            try:
                outputs = self.runner.infer(batch)
            except Exception as exc:  # ONNX Runtime's own errors (a wrong shape): the requests get them
                for index, _ in members:
                    responses[index] = self.error(f"ONNX Runtime: {exc}")
                continue
            start = 0
            for index, feed in members:
                count = len(feed[self.input_names[0]])
                responses[index] = self.response({name: outputs[name][start:start + count] for name in self.output_types})
                start += count
        return responses

    def finalize(self):
        self.runner.deactivate()


class Postprocess(_Step):
    """The network's output and ORIGINAL_SIZE -> LABELS (uint8 (N, H, W)) [+ PROBABILITIES (float32 (N, C, H, W))]."""

    def initialize(self, args):
        super().initialize(args)
        self.head = Head.from_manifest(self.manifest)
        self.prediction = self.config["input"][0]["name"]

    def run(self, request) -> dict[str, np.ndarray]:
        scores, sizes = self.input(request, self.prediction), self.input(request, ORIGINAL_SIZE)
        shapes = {tuple(int(s) for s in size) for size in sizes}
        if len(shapes) != 1:
            raise BadInputError(f"the images of one request differ in size ({sorted(shapes)}): send one image per request")
        shape = shapes.pop()
        outputs = {LABELS: np.stack([labels_at(labels, shape) for labels in self.head.labels(scores)])}
        if PROBABILITIES in self.output_types:
            outputs[PROBABILITIES] = np.stack([resize_channels(p, *shape) for p in self.head.probabilities(scores)])
        return outputs
