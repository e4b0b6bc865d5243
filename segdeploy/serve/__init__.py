"""Serving artifacts at scale: a Triton Inference Server model repository (triton.py, with the
Python-backend steps in triton_steps.py and the bundled server in server.py)."""
