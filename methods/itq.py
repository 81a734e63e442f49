"""ITQ: iterative quantization (Gong and Lazebnik, "Iterative Quantization: A Procrustean
Approach to Learning Binary Codes", CVPR 2011), a reference row of the unsupervised regime
(issue 31). It needs no gradient training and reads no label.

On the centred training inputs X (flattened normalised pixels, or a card's feature vectors):
1. PCA to K dimensions, V = X P, P the top K right singular vectors of X (an exact SVD; when
   X has more than EXACT_PCA_LIMIT rows and columns, as a TF-IDF card does, a seeded randomized
   range finder with subspace iterations, named in the record's `pca`);
2. from a random orthogonal R (the QR factor of a Gaussian matrix, seeded), alternate
   B = sign(V R) and R = argmin over orthogonal R of ||B - V R||_F (the orthogonal Procrustes
   problem: R = S T^T from the SVD V^T B = S Omega T^T), `iterations` times (50, the paper's
   setting). Each step minimises the quantization loss ||B - V R||_F^2 over one factor,
   so ||sign(VR) - VR||_F^2 never rises; the record keeps it per iteration.
The code of any item is sign((x - mean) P R). The linear algebra runs in torch, float64, so that
it follows the run's fixed thread count (numpy's BLAS threads would make the fit's last digits,
and so the record, depend on how many runs share the machine).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.errors import UserError
from methods.base import Param, Task
from methods.projection import FittedProjection

# Above this many rows and columns a full SVD costs minutes (a 10,000-term TF-IDF card: about
# 9 minutes on one thread); the top-K subspace is then found by a randomized range finder with
# subspace iterations (Halko, Martinsson and Tropp, SIAM Review 2011, algorithms 4.4 and 5.1).
EXACT_PCA_LIMIT = 4096
OVERSAMPLE, POWER_ITERATIONS = 2.0, 8  # sketch width = 2 K + 10 columns; 8 subspace iterations


def pca_directions(centred: np.ndarray, dims: int,
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, float, str]:
    """The top `dims` principal directions [D, dims] of centred data, the fraction of the
    variance they keep, and how they were found: an exact SVD without `rng`, the randomized
    range finder seeded from `rng` with it (the caller decides when an input is too wide)."""
    x = torch.as_tensor(centred, dtype=torch.float64)
    if rng is None:
        _, singular, vt = torch.linalg.svd(x, full_matrices=False)
        energy = (singular**2).numpy()
        return vt[:dims].T.numpy(), float(energy[:dims].sum() / max(energy.sum(), 1e-300)), "exact SVD"
    width = min(min(x.shape), int(OVERSAMPLE * dims) + 10)
    sketch = torch.as_tensor(rng.standard_normal((x.shape[1], width)))
    basis = torch.linalg.qr(x @ sketch).Q  # [N, width], orthonormal
    for _ in range(POWER_ITERATIONS):  # re-orthonormalised each half step (algorithm 4.4)
        basis = torch.linalg.qr(x @ torch.linalg.qr(x.T @ basis).Q).Q
    _, singular, vt = torch.linalg.svd(basis.T @ x, full_matrices=False)
    kept = float((singular[:dims] ** 2).sum() / max(float((x**2).sum()), 1e-300))
    how = f"randomized range finder ({width} columns, {POWER_ITERATIONS} subspace iterations)"
    return vt[:dims].T.numpy(), kept, how


def random_rotation(dims: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix: Q of the QR of a Gaussian matrix, columns sign-fixed."""
    q, r = torch.linalg.qr(torch.as_tensor(rng.standard_normal((dims, dims))))
    return (q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)).numpy()


def quantization_loss(v: np.ndarray | torch.Tensor, rotation: np.ndarray | torch.Tensor) -> float:
    """||sign(V R) - V R||_F^2."""
    projected = torch.as_tensor(v, dtype=torch.float64) @ torch.as_tensor(rotation, dtype=torch.float64)
    return float(((torch.where(projected >= 0, 1.0, -1.0) - projected) ** 2).sum())


def procrustes(v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The orthogonal R minimising ||codes - V R||_F: S T^T from the SVD V^T codes = S Omega T^T."""
    left, _, right = torch.linalg.svd(v.T @ codes)
    return left @ right


def itq_rotation(v: np.ndarray, rotation: np.ndarray, iterations: int) -> tuple[np.ndarray, list[float]]:
    """ITQ's alternation from `rotation`; the quantization loss before and after every iteration."""
    v_t = torch.as_tensor(v, dtype=torch.float64)
    r_t = torch.as_tensor(rotation, dtype=torch.float64)
    losses = [quantization_loss(v_t, r_t)]
    for _ in range(iterations):
        codes = torch.where(v_t @ r_t >= 0, 1.0, -1.0).to(torch.float64)
        r_t = procrustes(v_t, codes)
        losses.append(quantization_loss(v_t, r_t))
    return r_t.numpy(), losses


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
        wide = min(centred.shape) > EXACT_PCA_LIMIT  # only then is a sketch drawn
        sketch_rng = np.random.default_rng(rng.integers(2**63)) if wide else None
        directions, kept, how = pca_directions(centred, bits, sketch_rng)
        v = (torch.as_tensor(centred, dtype=torch.float64) @ torch.as_tensor(directions)).numpy()
        start = random_rotation(bits, rng) if self.config["init"] == "random" else np.eye(bits)
        rotation, losses = itq_rotation(v, start, int(self.config["iterations"]))
        rotated = torch.as_tensor(v) @ torch.as_tensor(rotation)
        balance = (rotated >= 0).double().mean(dim=0).numpy()
        return (torch.as_tensor(directions) @ torch.as_tensor(rotation)).numpy(), {
            "pca_variance_kept": kept,
            **({"pca": how} if wide else {}),  # records of narrow inputs keep their v1 form
            "quantization_loss": losses,  # ||sign(VR) - VR||_F^2, before and after each iteration
            "bit_balance": {"min": float(balance.min()), "max": float(balance.max())},
        }
