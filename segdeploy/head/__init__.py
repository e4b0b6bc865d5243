"""The deployment head: what an exported graph hands back (logits, probabilities or the label map).

``graph`` appends a head to a scores graph; ``fuse`` rewrites a final Resize + ArgMax into the
fused upsample + argmax node (``onnx_node``), whose kernels (``kernel``, CPU and CUDA) interpolate
and take the argmax without writing the full-resolution scores. Submodules are imported where used.
"""
