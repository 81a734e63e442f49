"""hashbench: one backbone, one split, one loop and one evaluator for deep supervised hashing."""

import os

__version__ = "0.1.0"

# Numba's default OpenMP threading layer spins threads that fight PyTorch's own OpenMP pool:
# training slowed ~100x after the first evaluation. The workqueue layer has no such clash.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

# Bump when a change alters the numbers a run produces (loop, evaluator, split, a method's
# default behaviour). Reports flag records written under another value as "older code".
RESULTS_VERSION = 2
