"""segdeploy: semantic-segmentation models to fast, verified inference.

The package root imports nothing heavy: the device side (bench, infer, build) must work
on a machine that has numpy and onnxruntime or TensorRT but no torch.
"""

__version__ = "0.1.0"
