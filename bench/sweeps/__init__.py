"""Sweeps: named experiments, planning and executing many runs (locally, in processes, or on a
Dask cluster) with per-run locks and resumption, record migration, and the closing summaries.

May import: `bench.training` and everything below it."""
