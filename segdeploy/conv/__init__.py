"""Depthwise and separable convolutions as segdeploy nodes: CPU kernels (``kernel``), the ONNX nodes
(``onnx_node``), the graph rewrite (``rewrite``) decided by measurement (``measure``), atrous
convolutions that skip the taps in the padding (``atrous``) and the artifacts (``artifact``)."""
