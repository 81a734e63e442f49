"""LSH: random-projection locality-sensitive hashing, a reference row of the unsupervised regime
(issue 31), not a learnt method.

Each bit is the sign of the centred input's projection on a random Gaussian direction: for two
inputs at angle theta, a bit differs with probability theta / pi (Charikar, "Similarity
estimation techniques from rounding algorithms", STOC 2002), so the Hamming distance estimates
the angle. Nothing trains and no label is read: `setup` draws W [D, K] i.i.d. N(0, 1) from the
run's seed and centres the inputs on the training mean (the ITQ paper's baselines are run on
zero-centred data; Gong and Lazebnik, CVPR 2011). Inputs are the flattened normalised pixels
(or a card's feature vectors), the same inputs as `itq`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from methods.projection import FittedProjection


class LSH(FittedProjection):
    name = "lsh"
    summary = ("reference row (unsupervised, no training): sign of random Gaussian projections of "
               "the centred flattened inputs")
    reference = ("Charikar, STOC 2002 (sign random projections); as the LSH baseline of Gong and "
                 "Lazebnik, CVPR 2011")
    params: dict[str, Any] = {}

    def fit(self, centred: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        weights = rng.standard_normal((centred.shape[1], self.task.bits))
        return weights, {"projection": "i.i.d. N(0, 1), seeded from the run's seed"}
