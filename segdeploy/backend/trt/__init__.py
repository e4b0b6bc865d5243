"""TensorRT: everything segdeploy knows of it lives in this package, in Polygraphy's shape.

Data flows one way (a module imports only those above it)::

    releases     versions, the one table of release differences, JetPack
    profile      optimization profiles (min/opt/max shapes)
    plan         BuildPlan: an artifact and the build options, checked for the target release
    engine_json  engine.json: made, written, read, checked against this machine
    trtexec      the trtexec command line of a plan
    cuda         device memory, streams and events (pycuda or Polygraphy's wrapper)
    loader       import TensorRT, load plugins, build, deserialize
    build        plan -> model.engine + engine.json
    runner       TrtRunner: an engine behind the backends' runner interface
    verify       an engine against its FP32 ONNX in ONNX Runtime

Nothing here imports TensorRT at import time; ``loader.import_tensorrt()`` raises
``TensorRTMissingError`` (exit 2) where it is not installed.
"""
