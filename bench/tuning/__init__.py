"""Tuning: the equal-budget Optuna search per method, the transfer check across code lengths,
and the fidelity checks of tuned settings against the spec.

May import: `bench.sweeps` and everything below it."""
