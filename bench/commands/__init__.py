"""The CLI's subcommands: one module per `python -m bench <name>` (run, report, tune, check,
list, records, evaluate, centers, perf, readme), each with `configure(parser)` and
`execute(args) -> int`; `bench.cli` finds them by name and each imports heavy libraries only
when it runs.

May import: every stage below it (`bench.report`, `bench.tuning`, `bench.perf`,
`bench.sweeps`, `bench.training`, `bench.runs`, `bench.network`, `bench.data`,
`bench.evaluation`, `bench.errors`, `methods`). Nothing but `bench.cli` imports it."""
