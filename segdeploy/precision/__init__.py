"""Precision in the ONNX graph: FP16-typed and INT8 Q/DQ artifacts, checked against FP32.

``pipeline.make_fp16`` / ``pipeline.make_int8`` are the entry points (``segdeploy fp16`` and
``segdeploy quantize``); ``gate`` holds the accuracy budget and the sensitivity analysis,
``int8`` the quantization schemes and TensorRT's Q/DQ rules, ``fp16`` the conversion,
``comparison`` the comparison with FP32 in ONNX Runtime on the CPU (its metrics come from
``segdeploy.evaluation.metrics``).
"""
