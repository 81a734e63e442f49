"""Evaluation: the one retrieval evaluator (mAP, tie-aware mAP, P@r<=2, PR points), its
compiled kernels, the chance rows, and the evaluation of queries under attack.

May import: `bench.errors` (and `bench.data` for labels). Nothing above it: the evaluator is
the same for every method and knows nothing of training."""
