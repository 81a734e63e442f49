"""MISH (Hansen, Hansen, Simonsen, Alstrup, Lioma, "Unsupervised Multi-Index Semantic Hashing",
WWW 2021), in the unsupervised regime (`supervised = False`), for feature (document) cards only.
Facts from shared/specs/methods-wave3.md section 9 and the official code (Varyn/MISH,
code/model.py and code/main.py's argument defaults), read for facts; pieces that differ from it
or that it did not settle are `reconstruction:` parameters or `reconstructed` entries.

Per training batch (the unaugmented term vectors x, `views = 0`; no label is read):
1. Encoder: p = sigmoid(h), h = the shared hash layer's output (the official encoder ends in a
   sigmoid dense layer). Bits b = 1[p > u], u ~ U(0, 1), with a straight-through gradient
   (identity in p); code c = 2b - 1. Retrieval: threshold 0.5 on p, i.e. sign(h).
2. Decoder (owned): noisy code z = c + sigma * e, e ~ N(0, I); word logits
   z @ (E * w[:, None])^T + bias, with a word embedding E [V, K], a per-word importance w [V]
   (initial U(0.1, 1)), E initial U(-1, 1), a zero bias [V]; loss_rec = -sum over words present
   in the document (x > 0) of log softmax, summed over the batch (main.py agg_loss 1).
   sigma = max(0, 1 - 1e-6 * step) (main.py: 1.0, reduction 1e-6). Plus `kl_weight` x
   KL(Bernoulli(p) || Bernoulli(1/2)) summed over bits (main.py KLweight 0: off).
3. Bit balance (model.py's "pred_one_all" with gradient reversal): for each bit i a linear map
   (owned, no bias) predicts every other bit's p from p_i; the predictor minimises the masked
   squared error, and the gradient reaching p_i is reversed, so the encoder makes bits hard to
   predict from each other. Weight `bit_balance`, off by default as main.py's coef_bb (-1).
4. Multi-index problem pairs (model.py find_problematic_pair): a ring memory of the last
   `memory` deterministic codes (and their dataset indices). For each document one random
   `block`-bit substring is chosen; a memory code that equals it on that substring (a
   multi-index hit) but lies outside its `top_k` nearest memory codes in full Hamming distance is
   a problem pair. Loss: `problem_pair` x sum over pairs of the substring inner product of the
   deterministic codes (straight-through), so the pair is pushed apart on that substring.

Left out: the neighbour reconstruction term (main.py doc2weight 1: the decoder also
reconstructs the document from the code of its nearest neighbour by precomputed self-taught
hashing codes, `numnbr` 10; no STH codes exist here), the official "updated" variant that
picks the block and the allowed in-block distance from the distance to the k-th neighbour,
its `top_k_pair` / `new_top_k_pair` positive pairs, the optional bit rotation (`rotate`), the
lower-dimensional word embedding option, and a multi-index search metric at evaluation (the
evaluator scores full Hamming ranking, as for every method). The spec's "10 neighbours" is
main.py's numnbr, which belongs to the left-out neighbour term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bench.errors import UserError
from methods.base import HashMethod, Param, TrainContext

_CODE = "Varyn/MISH code/model.py"
_SPEC = "shared/specs/methods-wave3.md section 9"
_MAIN = "Varyn/MISH code/main.py default:"


class StraightThroughBernoulli(torch.autograd.Function):
    """b = 1[p > u] in the forward pass, identity gradient in p (u gets none)."""

    @staticmethod
    def forward(ctx: Any, probabilities: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return (probabilities > uniform).to(probabilities.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def sample_bits(probabilities: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """0/1 samples of Bernoulli(p) with a straight-through gradient."""
    uniform = torch.rand(probabilities.shape, generator=generator).to(probabilities.device)
    return StraightThroughBernoulli.apply(probabilities, uniform)


class ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def noise_sigma(step: int, start: float = 1.0, decay: float = 1e-6) -> float:
    """The decoder's noise level after `step` optimizer steps (never below 0)."""
    return max(0.0, start - decay * step)


class WordDecoder(nn.Module):
    """Word-softmax decoder: logits = z @ (E * w[:, None])^T + bias over a vocabulary of V."""

    def __init__(self, vocabulary: int, bits: int, generator: torch.Generator) -> None:
        super().__init__()
        self.embedding = nn.Parameter(2 * torch.rand(vocabulary, bits, generator=generator) - 1)
        self.importance = nn.Parameter(0.1 + 0.9 * torch.rand(vocabulary, generator=generator))
        self.bias = nn.Parameter(torch.zeros(vocabulary))

    def loss(self, noisy_code: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """Per document: -sum over the words it contains (x > 0) of log softmax(logits)."""
        logits = noisy_code @ (self.embedding * self.importance[:, None]).T + self.bias
        log_probs = torch.log_softmax(logits, dim=1)
        return -(log_probs * (documents > 0).to(log_probs.dtype)).sum(dim=1)


def kl_to_half(p: torch.Tensor) -> torch.Tensor:
    """sum over bits of KL(Bernoulli(p) || Bernoulli(1/2)), per document."""
    eps = 1e-10
    return (p * torch.log(torch.clamp(p / 0.5, min=eps))
            + (1 - p) * torch.log(torch.clamp((1 - p) / 0.5, min=eps))).sum(dim=1)


def bit_balance_loss(p: torch.Tensor, predictor: torch.Tensor) -> torch.Tensor:
    """Mean over bits i of the masked MSE of predicting every other bit's p (stopped) from p_i
    through `predictor[i]` (a row of K weights), with p_i's gradient reversed."""
    bits = p.shape[1]
    source = ReverseGradient.apply(p)  # [B, K]
    predicted = source[:, :, None] * predictor[None]  # [B, i, j]
    target = p.detach()[:, None, :]
    mask = 1.0 - torch.eye(bits, device=p.device, dtype=p.dtype)
    squared = (predicted - target) ** 2 * mask
    per_bit = squared.sum(dim=(0, 2)) / (mask.sum(dim=1) * len(p))
    return per_bit.mean()


def problem_partners(codes: torch.Tensor, memory: torch.Tensor, blocks: torch.Tensor,
                     block: int, neighbours: int, same: torch.Tensor) -> torch.Tensor:
    """For each code (±1, [B, K]) the memory row (±1, [M, K]) that matches it exactly on its
    chosen block (`blocks`, [B] block numbers) but is not among its `neighbours` nearest memory
    codes (full inner product), excluding `same` ([B, M] True where the row is the document
    itself); -1 where there is none. The first such row in memory order."""
    similarity = codes @ memory.T  # [B, M]
    masked = similarity.masked_fill(same, float("-inf"))
    k = min(neighbours, memory.shape[0])
    kth = masked.topk(k, dim=1).values[:, -1:]
    # Inner products on every block at once ([n, B, M], one matmul per block; sums of +-1 are
    # exact in float), then each code's own block: equal on the block <=> product == block.
    used = codes.shape[1] // block * block
    per_block = torch.einsum("bnk,mnk->nbm", codes[:, :used].unflatten(1, (-1, block)),
                             memory[:, :used].unflatten(1, (-1, block)))
    hit = per_block[blocks, torch.arange(len(codes), device=codes.device)] == block  # [B, M]
    problem = hit & (similarity < kth) & ~same
    first = torch.where(problem.any(dim=1), problem.float().argmax(dim=1), torch.full_like(blocks, -1))
    return first


class MISH(HashMethod):
    name = "mish"
    summary = ("Multi-index semantic hashing: ST-Bernoulli bits, noisy-code word-softmax decoder, "
               "gradient-reversal bit balance, problem pairs over 16-bit substrings (documents)")
    reference = "Hansen et al., Unsupervised Multi-Index Semantic Hashing, WWW 2021"
    supervised = False
    views = 0
    inputs = ("features",)
    retrieval_output = "sign(h) = threshold 0.5 on sigmoid(h), h = the shared hash layer's output"
    params = {
        "sigma_start": Param(1.0, "decoder noise sigma at step 0", source=_SPEC),
        "sigma_decay": Param(1e-6, "decoder noise sigma decrease per optimizer step", source=_SPEC),
        "kl_weight": Param(0.0, "weight of KL(Bernoulli(p) || Bernoulli(1/2))", source=_MAIN + " KLweight"),
        "bit_balance": Param(0.0, "weight of the gradient-reversal bit-balance term (0: off)",
                             source=_MAIN + " coef_bb -1 (off)"),
        "problem_pair": Param(1.0, "weight of the problem-pair term",
                              source=_MAIN + " problem_pair (alpha_1)"),
        "block": Param(16, "bits per substring of the multi-index", source=_MAIN + " block_size"),
        "memory": Param(20000, "codes kept in the pair memory", source=_MAIN + " memsize"),
        "top_k": Param(100, "nearest memory codes a problem partner must lie outside",
                       source=_CODE + " kk=100 (scaled by memory / training size, 1 when all fit)"),
    }
    native = {"optimizer": "adam", "lr": 1e-3, "batch_size": 40}
    native_source = f"{_SPEC} (official code/main.py): Adam lr 1e-3, batch 40"
    reconstructed = {
        "encoder": "the shared backbone (mlp) and hash layer through a sigmoid stand in for the "
                   "official dense ReLU encoder with dropout 0.8",
        "problem pair side": "the official code stops the document's gradient and re-encodes the "
                             "partner from its words; here the partner's stored code is fixed and "
                             "the document moves (the loop sees only the batch's inputs)",
        "problem pair choice": "the first qualifying memory code in memory order, block drawn "
                               "uniformly (official default: sample_blocks 1 and "
                               "problem_pair_choose_last 1, which pick the block from the k-th "
                               "neighbour distance and the farthest pair)",
        "bit balance type": "pred_one_all (official default type_bb: pred_rev_block); off by default",
    }

    def __init__(self, config: dict[str, Any], task: Any) -> None:
        super().__init__(config, task)
        self.generator = torch.Generator().manual_seed(int(task.seed) * 7919 + 0x4D495348)
        self.memory_codes: torch.Tensor | None = None
        self.memory_index = torch.zeros(0, dtype=torch.long)
        self.write = 0
        self.pairs_found = 0

    @classmethod
    def check(cls, config: dict[str, Any], task: Any) -> None:
        block = int(config.get("block", 16))
        if block <= 0 or task.bits % min(block, task.bits):
            raise UserError(f"mish: block={block} must divide bits={task.bits}")

    def setup(self, ctx: TrainContext) -> None:
        sample = ctx.encode_with(nn.Identity(), ctx.train_indices[:1])
        if sample.ndim != 2:
            raise UserError(f"mish: hashes documents (feature vectors); dataset "
                            f"'{ctx.config.get('dataset', 'this card')}' has images: choose a feature "
                            f"card such as wordnet-nouns")
        bits = ctx.task.bits
        self.owned["decoder"] = WordDecoder(sample.shape[1], bits, self.generator).to(ctx.device)
        self.owned["balance"] = nn.Linear(bits, bits, bias=False).to(ctx.device)
        self.block = min(int(self.config["block"]), bits)
        # main.py: a memory larger than the training set shrinks to it (no stale duplicates)
        self.memory_size = min(int(self.config["memory"]), len(ctx.train_indices))
        self.memory_codes = torch.zeros(0, bits, device=ctx.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None
        documents = ctx.batch.images.float()
        p = torch.sigmoid(h)
        code = 2 * sample_bits(p, self.generator) - 1
        sigma = noise_sigma(ctx.step, float(self.config["sigma_start"]), float(self.config["sigma_decay"]))
        noise = torch.randn(code.shape, generator=self.generator).to(code.device)
        reconstruction = self.owned["decoder"].loss(code + sigma * noise, documents).sum()
        total = reconstruction
        ctx.log("reconstruction", reconstruction.detach())
        if float(self.config["kl_weight"]) > 0:
            total = total + float(self.config["kl_weight"]) * kl_to_half(p).sum()
        if float(self.config["bit_balance"]) > 0:
            balance = bit_balance_loss(p, self.owned["balance"].weight)
            ctx.log("bit_balance", balance.detach())
            total = total + float(self.config["bit_balance"]) * balance
        deterministic = torch.where(h.detach() >= 0, 1.0, -1.0)
        indices = torch.as_tensor(np.asarray(ctx.batch.indices), dtype=torch.long)
        if float(self.config["problem_pair"]) > 0:
            pairs = self._problem_pairs(p, deterministic, indices, ctx)
            total = total + float(self.config["problem_pair"]) * pairs
        self._remember(deterministic, indices)
        return total

    def _problem_pairs(self, p: torch.Tensor, codes: torch.Tensor, indices: torch.Tensor,
                       ctx: TrainContext) -> torch.Tensor:
        memory = self.memory_codes
        if memory is None or len(memory) == 0:
            return p.sum() * 0
        blocks = torch.randint(0, p.shape[1] // self.block, (len(p),), generator=self.generator).to(p.device)
        same = (indices[:, None] == self.memory_index[None]).to(p.device)
        partner = problem_partners(codes, memory, blocks, self.block, int(self.config["top_k"]), same)
        found = partner >= 0
        self.pairs_found += int(found.sum())
        ctx.log("problem_pairs", float(found.float().mean()))
        if not bool(found.any()):
            return p.sum() * 0
        columns = blocks[found, None] * self.block + torch.arange(self.block, device=p.device)[None]
        # the deterministic code with a straight-through gradient: value sign(h), d/dp = 2
        straight = 2 * StraightThroughBernoulli.apply(p[found], torch.full_like(p[found], 0.5)) - 1
        own = torch.gather(straight, 1, columns)
        theirs = torch.gather(memory[partner[found]], 1, columns)
        return (own * theirs).sum()

    def _remember(self, codes: torch.Tensor, indices: torch.Tensor) -> None:
        assert self.memory_codes is not None
        size = self.memory_size
        if len(self.memory_codes) < size:
            room = size - len(self.memory_codes)
            self.memory_codes = torch.cat([self.memory_codes, codes[:room]])
            self.memory_index = torch.cat([self.memory_index, indices[:room]])
            codes, indices = codes[room:], indices[room:]
        # Ring: overwrite the oldest. As writing one code after another would: of a batch larger
        # than the ring only the last `size` codes stay, in the slots they would end in.
        count = len(codes)
        codes, indices = codes[-size:], indices[-size:]
        slots = (self.write + count - len(codes) + torch.arange(len(codes))) % size
        self.memory_codes[slots.to(self.memory_codes.device)] = codes
        self.memory_index[slots] = indices
        self.write = (self.write + count) % size

    def record(self) -> dict[str, Any]:
        return {"problem_pairs_found": self.pairs_found,
                "memory_filled": 0 if self.memory_codes is None else len(self.memory_codes)}
