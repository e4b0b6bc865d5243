"""Inference backends, one folder each (Polygraphy's shape): a *loader* is a small callable
that builds the backend's object (a session, a module, an engine), a *runner* owns it and
exposes one interface, ``infer(feed) -> outputs``. Optional dependencies are imported only
inside the backend that needs them.
"""

from .base import Runner, make_runner

__all__ = ["Runner", "make_runner"]
