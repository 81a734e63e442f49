"""Benchmarks behind `python -m bench perf <name>`: one module each, with `configure(parser)`
and `run(args) -> int` (heavy imports inside `run`, so `--help` stays instant)."""
