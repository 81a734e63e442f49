"""Benchmarks behind `python -m bench perf <name>`: one module each, with `configure(parser)`
and `run(args) -> int` (heavy imports inside `run`, so `--help` stays instant).

May import: `bench.sweeps` and everything below it (`bench.training`, `bench.runs`,
`bench.network`, `bench.data`, `bench.evaluation`, `bench.errors`, `methods`); never
`bench.tuning`, `bench.report` or `bench.commands`."""
