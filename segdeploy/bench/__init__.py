"""Latency, throughput and memory of artifacts on several backends, side by side in one run.

``run`` benchmarks every (artifact, backend) pair in its own subprocess (``python -m
segdeploy.bench``, which runs ``worker``): its peak resident memory is then its own, and one
framework's threads or allocator cannot slow the next. The JSON document it produces is
versioned (``schemas/bench.schema.json``). ``timing`` holds the settings and the timing
statistics, ``report`` the terminal tables, comparisons and plots, ``jetson`` the power rails,
clocks and thermal state of a Jetson board.

Nothing is imported here: the subprocess loads only what its backend needs.
"""
