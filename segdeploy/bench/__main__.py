"""``python -m segdeploy.bench REQUEST_JSON``: one benchmark subprocess (see ``worker``; a Triton
server is timed from the client side by ``triton``)."""

import json
import sys

from .worker import bench_backend, main

if __name__ == "__main__":
    bench = bench_backend
    if json.loads(sys.argv[1])["backend"] == "triton":
        from .triton import bench_triton as bench
    main(sys.argv[1], bench)
