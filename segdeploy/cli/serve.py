from __future__ import annotations

import os

import click

from .common import echo_json, json_option


def _sizes(ctx, param, value):
    """``"4,8"`` -> (4, 8)."""
    if not value:
        return ()
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"expected comma-separated batch sizes >= 1, got {value!r}")
    return sizes


@click.group()
def serve():
    """Serve artifacts with NVIDIA Triton Inference Server (or DeepStream).

    \b
    Examples:
      segdeploy serve triton artifacts/dlv3p -o models --model-step python  # write a model repository
      segdeploy serve start models                    # run it (pip install 'segdeploy[serve]')

    \b
    Then send an image (any format PIL reads) and get the label map back:
      import numpy as np, tritonclient.http as http
      client = http.InferenceServerClient("localhost:8000")
      image = http.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
      image.set_data_from_numpy(np.array([[open("street.jpg", "rb").read()]], dtype=object))
      labels = client.infer("dlv3p_segment", [image]).as_numpy("LABELS")[0]   # uint8 H x W
    """


@serve.command("triton")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", "repo_dir", required=True, type=click.Path(file_okay=False),
              help="The model repository folder to write (tritonserver --model-repository).")
@click.option("--name", "names", multiple=True, metavar="NAME",
              help="Model name, once per artifact, in order.  [default: the artifact folder's name]")
@click.option("--model-step", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default="onnxruntime", show_default=True,
              help="How the network runs: Triton's ONNX Runtime backend (model.onnx), a TensorRT engine from "
                   "`segdeploy build` (model.plan), or ONNX Runtime inside the Python backend (servers with only that backend).")
@click.option("--max-batch-size", type=click.IntRange(0), default=None,
              help="Largest batch the dynamic batcher forms; 0: no batching.  [default: 8, or the engine profile's "
                   "largest batch when smaller; 0 for a graph with a fixed batch]")
@click.option("--preferred-batch-sizes", callback=_sizes, metavar="B1,B2,...",
              help="Batch sizes the dynamic batcher aims for.  [default: up to the max batch size]")
@click.option("--queue-delay-us", type=click.IntRange(0), default=500, show_default=True,
              help="How long a request may wait for others to join its batch (microseconds).")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="Instances of the network (and of each pre/post step) the server runs side by side.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Where the network runs (KIND_CPU / KIND_GPU).  [default: gpu for tensorrt, else cpu]")
@click.option("--trt-accelerator/--no-trt-accelerator", default=None,
              help="ONNX Runtime on a GPU: run through TensorRT.  [default: on with --device gpu]")
@click.option("--trt-precision", type=click.Choice(["FP32", "FP16", "INT8"], case_sensitive=False),
              help="The TensorRT accelerator's precision.  [default: the artifact's]")
@click.option("--threads", type=click.IntRange(0), default=0, help="ONNX Runtime threads per instance (0: its default).")
@click.option("--engine", "engines", multiple=True, type=click.Path(),
              help="--model-step tensorrt: an engine folder (model.engine + engine.json); several: one per GPU kind "
                   "(cc_model_filenames).  [default: the artifact folder's engine]")
@click.option("--probabilities", is_flag=True, help="Also return per-class probabilities (float32 C x H x W) at the image's size.")
@click.option("--no-pipeline", is_flag=True, help="Write the network only: no pre/post-processing steps, no ensemble.")
@click.option("--overwrite", is_flag=True, help="Replace REPO if it exists.")
@json_option
def triton(artifacts, repo_dir, names, model_step, max_batch_size, preferred_batch_sizes, queue_delay_us, instances, device,
           trt_accelerator, trt_precision, threads, engines, probabilities, no_pipeline, overwrite, as_json):
    """Write a Triton model repository serving ARTIFACTS, checked before it is written.

    For each artifact NAME (an artifact folder, or an adopted ONNX file):

    \b
      NAME/              the network (config.pbtxt + 1/model.onnx or 1/model.plan):
                         float32 NCHW in, the graph's outputs out; dims -1 where the
                         graph is dynamic; dynamic batching; instance group
      NAME_segment/      the ensemble a client calls: IMAGE_BYTES (an encoded image,
                         BYTES [1]) or RGB (uint8 H x W x 3) in, LABELS (uint8 H x W,
                         at the image's size) [and PROBABILITIES] out
      NAME_preprocess/   Python backend: decode, resize, normalise as the manifest says
      NAME_postprocess/  Python backend: argmax / threshold as the manifest says

    The labels equal `segdeploy infer`'s for the same artifact and image. A bad artifact exits 2
    and writes nothing.

    The Python-backend steps import segdeploy: run the server with the environment segdeploy is
    installed in. `segdeploy serve start REPO` does it with the tritonserver that
    nvidia-pytriton bundles (`pip install 'segdeploy[serve]'`: x86-64 Linux, glibc >= 2.35,
    Python backend only, hence `--model-step python` there). In Triton's container, install
    segdeploy into the server's Python (pip install segdeploy[ort]), or set PYTHONPATH to the
    site-packages holding it: the generated model.py files add PYTHONPATH to sys.path, because
    the stub's interpreter ignores it.

    \b
    Examples:
      segdeploy serve triton artifacts/dlv3p -o models --model-step python
      segdeploy serve triton artifacts/dlv3p -o models --device gpu --instances 2
      segdeploy serve triton out/dlv3p_fp16 -o models --model-step tensorrt --max-batch-size 4
      segdeploy serve triton out/dlv3p -o models --model-step tensorrt --engine a100/ --engine l4/
      segdeploy serve triton fp32/ int8/ -o models --name dlv3p --name dlv3p_int8 --probabilities
    """
    from ..serve.triton import TritonOptions, write_repository

    options = TritonOptions(names=tuple(names), model_step=model_step, max_batch_size=max_batch_size,
                            preferred_batch_sizes=preferred_batch_sizes, queue_delay_us=queue_delay_us, instances=instances,
                            device=device, trt_accelerator=trt_accelerator, trt_precision=trt_precision, threads=threads,
                            engines=tuple(engines), probabilities=probabilities, pipeline=not no_pipeline,
                            overwrite=overwrite)  # fmt: skip
    repo = write_repository(list(artifacts), repo_dir, options)
    if as_json:
        echo_json({"repository": str(repo.path), "models": [
            {"artifact": str(m.artifact), "model": m.model, "step": m.step, "max_batch_size": m.max_batch_size,
             "input": m.model_input, "output": m.model_output, "preprocess": m.preprocess, "postprocess": m.postprocess,
             "ensemble": m.ensemble, "notes": m.notes} for m in repo.models]})  # fmt: skip
        return
    click.echo(f"wrote {repo.path}: {', '.join(repo.model_names())}")
    for m in repo.models:
        batching = f"dynamic batching up to {m.max_batch_size}" if m.max_batch_size else "no batching"
        target = f"{m.ensemble} (IMAGE_BYTES or RGB -> LABELS)" if m.ensemble else f"{m.model} ({m.model_input} -> {m.model_output})"
        click.echo(f"  {m.model}: {m.step} step, {batching}; clients call {target}")
        for note in m.notes:
            click.echo(f"  note: {note}")
    click.echo(f"run it: segdeploy serve start {repo.path}")


@serve.command("start")
@click.argument("repo_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True, help="Address the endpoints listen on.")
@click.option("--print-command", is_flag=True, help="Print the environment and command line instead of starting the server.")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def start(repo_dir, http_port, grpc_port, metrics_port, address, print_command, server_args):
    """Run REPO_DIR with the tritonserver that nvidia-pytriton bundles (pip install 'segdeploy[serve]').

    The server runs in the foreground (Ctrl-C stops it) with this Python's environment, so the
    Python-backend steps import this segdeploy: LD_LIBRARY_PATH holds the wheel's libraries and
    libpython, PYTHONPATH this interpreter's sys.path. Its Python backend stub for this Python
    version is copied into ~/.cache/segdeploy/triton/. Arguments after `--` go to tritonserver.

    \b
    Examples:
      segdeploy serve start models
      segdeploy serve start models --http-port 9000 -- --log-verbose=1
      segdeploy serve start models --print-command     # to run it under systemd or a container
    """
    import sys
    from pathlib import Path

    from ..serve.server import cannot_run_reason, prepare_backends, server_command, server_environment

    reason = cannot_run_reason()
    if reason:
        from ..errors import BadInputError

        raise BadInputError(f"cannot run the bundled Triton server here: {reason}")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    backends = prepare_backends(Path.home() / ".cache" / "segdeploy" / "triton" / f"backends-py{version}")
    command = server_command(Path(repo_dir).resolve(), backends, http_port=http_port, grpc_port=grpc_port,
                             metrics_port=metrics_port, address=address, extra=tuple(server_args))  # fmt: skip
    env = server_environment()
    if print_command:
        click.echo(f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']} PYTHONPATH={env['PYTHONPATH']} \\\n  " + " ".join(command))
        return
    click.echo(f"starting tritonserver on {address}: http {http_port}, grpc {grpc_port}, metrics {metrics_port}", err=True)
    os.execve(command[0], command, env)


# DeepStream's nvinfer config: its own module (segdeploy/cli/serve_deepstream.py).
from .serve_deepstream import deepstream  # noqa: E402  (kept apart from the Triton commands above)

serve.add_command(deepstream)
