"""Training: the one loop (build the run, train with selection on the validation database,
restore the best epoch, encode, evaluate, record) and the counted work of a run.

May import: `bench.runs`, `bench.network`, `bench.data`, `bench.evaluation`, `bench.errors`,
`methods`. Methods sit below it and never import it."""
