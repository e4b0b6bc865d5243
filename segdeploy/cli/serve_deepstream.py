"""``segdeploy serve deepstream``: a DeepStream nvinfer config folder for an artifact (segdeploy/serve/deepstream.py)."""

from __future__ import annotations

import click

from .common import echo_json, json_option


@click.command("deepstream")
@click.argument("artifact", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="New folder for the config, the model and labels.txt.")
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True,
              help="Frames per batch (nvinfer builds its engine for 1..N).")
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W",
              help="Network input size (infer-dims). Default: the manifest's.")
@click.option("--gpu-id", type=click.IntRange(0), default=0, show_default=True)
@click.option("--gie-unique-id", type=click.IntRange(1), default=1, show_default=True,
              help="The inference element's id in the pipeline (its metadata carries it).")
@click.option("--approximate-std", is_flag=True,
              help="Accept one net-scale-factor when the std differs per channel (the largest error is printed).")
@click.option("--engine", type=click.Path(),
              help="An engine `segdeploy build` made on the device (folder or model.engine, with engine.json): "
                   "nvinfer loads it instead of building one. Needed for INT8 artifacts.")
@click.option("--tensor-meta", is_flag=True, help="Also attach the raw output tensor to the metadata (output-tensor-meta).")
@json_option
def deepstream(artifact, output, batch_size, input_size, gpu_id, gie_unique_id, approximate_std, engine, tensor_meta, as_json):
    """Write a DeepStream nvinfer config for ARTIFACT into a new folder (config, model, labels).

    Every key comes from the manifest: network-type=2 (segmentation), infer-dims, the input and
    output names, model-color-format (RGB/BGR/GRAY), net-scale-factor and offsets from the
    normalisation, network-mode from the precision, num-detected-classes, and a
    segmentation-threshold under which nvinfer's labels are segdeploy's argmax. nvinfer's parser
    needs per-class probabilities: a logits or labels head is refused (export with --head
    probabilities). nvinfer has one scale factor for every channel: when the std differs per
    channel, --approximate-std accepts the closest one (its largest error is reported).

    \b
    Examples:
      segdeploy serve deepstream artifacts/dlv3p_probs -o ds/dlv3p --approximate-std
      segdeploy serve deepstream out_fp16 -o ds/fp16 --batch-size 4 --input-size 544 960
      segdeploy serve deepstream out_int8 -o ds/int8 --engine out_int8   # after `segdeploy build out_int8` on the device
      deepstream-app -c app.txt   # its [primary-gie] config-file=ds/dlv3p/config_infer_segdeploy.txt
    """
    from ..serve.deepstream import write_deepstream_config

    written = write_deepstream_config(artifact, output, batch_size=batch_size, input_size=tuple(input_size) if input_size else None,
                                      gpu_id=gpu_id, gie_unique_id=gie_unique_id, approximate_std=approximate_std,
                                      engine=engine, output_tensor_meta=tensor_meta)
    if as_json:
        fit = written.normalisation
        echo_json({"folder": str(written.folder), "config": str(written.config), "properties": written.properties,
                   "normalisation": {"net_scale_factor": fit.net_scale_factor, "offsets": list(fit.offsets),
                                     "exact": fit.exact, "max_error": fit.max_error},
                   "notes": written.notes})
        return
    for note in written.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {written.config} (+ {written.properties['onnx-file']}, labels.txt); "
               f"segmentation-threshold {written.properties['segmentation-threshold']}, "
               f"network-mode {written.properties['network-mode']}")
