"""ITQ: iterative quantization (Gong and Lazebnik, "Iterative Quantization: A Procrustean
Approach to Learning Binary Codes", CVPR 2011), a reference row of the unsupervised regime
(issue 31). It needs no gradient training and reads no label.

On the centred training inputs X (flattened normalised pixels, or a card's feature vectors):
1. PCA to K dimensions, V = X P, P the top K right singular vectors of X (numpy's SVD;
   scikit-learn is not in this environment);
2. from a random orthogonal R (the QR factor of a Gaussian matrix, seeded), alternate
   B = sign(V R) and R = argmin over orthogonal R of ||B - V R||_F (the orthogonal Procrustes
   problem: R = S T^T from the SVD V^T B = S Omega T^T; scipy), `iterations` times (50, the
   paper's setting). Each step minimises the quantization loss ||B - V R||_F^2 over one factor,
   so ||sign(VR) - VR||_F^2 never rises; the record keeps it per iteration.
The code of any item is sign((x - mean) P R).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import orthogonal_procrustes

from bench.errors import UserError
from methods.base import Param, Task
from methods.projection import FittedProjection


def pca_directions(centred: np.ndarray, dims: int) -> tuple[np.ndarray, float]:
    """The top `dims` principal directions [D, dims] of centred data, and the fraction of the
    variance they keep."""
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    energy = singular**2
    return vt[:dims].T, float(energy[:dims].sum() / max(energy.sum(), 1e-300))


def random_rotation(dims: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix: Q of the QR of a Gaussian matrix, columns sign-fixed."""
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def signs(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 1.0, -1.0)


def quantization_loss(v: np.ndarray, rotation: np.ndarray) -> float:
    """||sign(V R) - V R||_F^2."""
    projected = v @ rotation
    return float(((signs(projected) - projected) ** 2).sum())


def itq_rotation(v: np.ndarray, rotation: np.ndarray, iterations: int) -> tuple[np.ndarray, list[float]]:
    """ITQ's alternation from `rotation`; the quantization loss before and after every iteration."""
    losses = [quantization_loss(v, rotation)]
    for _ in range(iterations):
        codes = signs(v @ rotation)
        rotation, _ = orthogonal_procrustes(v, codes)
        losses.append(quantization_loss(v, rotation))
    return rotation, losses


class ITQ(FittedProjection):
    name = "itq"
    summary = ("reference row (unsupervised, no training): PCA to K dims of the centred flattened "
               "inputs, then ITQ's rotation (alternating sign / orthogonal Procrustes)")
    reference = "Gong and Lazebnik, Iterative Quantization, CVPR 2011"
    params = {
        "iterations": Param(50, "alternations of B = sign(VR) and the Procrustes rotation",
                            source="Gong and Lazebnik, CVPR 2011 (50 iterations)"),
        "init": Param("random", "starting rotation: random orthogonal (the paper) or identity "
                      "(plain PCA hashing before the first step)", choices=("random", "identity"),
                      source="Gong and Lazebnik, CVPR 2011 (random orthogonal initialisation)"),
    }

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        if int(config["iterations"]) < 0:
            raise UserError(f"itq: iterations={config['iterations']} is invalid; valid: an integer >= 0")

    def fit(self, centred: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        bits = self.task.bits
        directions, kept = pca_directions(centred, bits)
        v = centred @ directions
        start = random_rotation(bits, rng) if self.config["init"] == "random" else np.eye(bits)
        rotation, losses = itq_rotation(v, start, int(self.config["iterations"]))
        balance = (signs(v @ rotation) > 0).mean(axis=0)
        return directions @ rotation, {
            "pca_variance_kept": kept,
            "quantization_loss": losses,  # ||sign(VR) - VR||_F^2, before and after each iteration
            "bit_balance": {"min": float(balance.min()), "max": float(balance.max())},
        }
