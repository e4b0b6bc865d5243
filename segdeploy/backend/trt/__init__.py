"""TensorRT backend: loaders (import, plugins, build, deserialize), the runner, and its CUDA layer.

Nothing here imports TensorRT at import time; ``loader.import_tensorrt()`` raises
``TensorRTMissingError`` (exit 2) where it is not installed.
"""
