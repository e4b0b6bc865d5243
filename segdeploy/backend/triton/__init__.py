"""A running Triton Inference Server as a backend: the model is the server's, segdeploy is its client.

``runner`` holds ``TritonRunner`` (one request per ``infer``, over HTTP or gRPC, with ``tritonclient``
imported where used) and ``parse_url``. Serving repositories are written by ``segdeploy.serve``.
"""
