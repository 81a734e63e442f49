"""CgAT: center-guided adversarial training (Wang et al., WWW 2023), wrapped around a base method.

CgAT does not define codes of its own: it takes a trained hashing model and fine-tunes it on
adversarial examples. Each class (each label set, for multi-label data) gets a *center code*
b* = sign(N_neg * sum of the positive training codes - N_pos * sum of the negative ones), where
the positives are the training items that share a label with the sample (ties give 0). The
training step then
  1. computes b* of the batch from a memory B of the training codes,
  2. attacks the batch with PGD (L-inf in pixel space, the network in train mode), pushing its
     outputs away from b*: minimise mean(tanh(r(x')) * b*),
  3. writes the batch's benign codes into B and recomputes b*,
  4. minimises L_base(h) - mean(tanh(r(x_adv)) * b*).
Facts (official code xunguangwang/CgAT, central_adv_train.py, as summarised in
shared/specs/methods-wave3.md section 7): 7 PGD steps of 2/255 inside eps 8/255, random start,
the memory filled from the model before fine-tuning, 30 fine-tuning epochs after 100 of base
training.

Here the base is any registered method (`base`, default CSQ): its object is built with its own
settings (`base_settings`, resolved to every parameter of the base so the run id covers them),
and every hook (setup, loss, after-step, epoch end, owned modules, retrieval and attack
outputs, centers) is the base's. r is the base's `attack_output` (h for CSQ and CRH, as the
official tanh output). Deviation: one run replaces "train the base, then fine-tune from its
checkpoint": the adversarial term is switched on at `adv_start` of the run's epochs (100/130)
under the run's own optimizer and schedule.

`center_codes` and `pgd_linf` are also the attack evaluation's (bench/evaluation/attack.py calls
them for `center_targets` and `pgd`), so a model is trained against the attack it is measured with;
tests/test_cgat.py holds CgAT's training attack to the evaluation's for the same settings and seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.errors import UserError
from methods.base import TRAINING_PARAMS, HashMethod, Param, Task, TrainContext

_SEED_TAG = 0x43674154  # "CgAT": the random starts' stream, apart from other users of task.seed
_SOURCE = "official code (xunguangwang/CgAT, central_adv_train.py)"


def center_codes(labels: torch.Tensor, codes: torch.Tensor, code_labels: torch.Tensor) -> torch.Tensor:
    """CgAT's center code of each sample [B, K] from ±1 codes [N, K] with labels [N, C]: with P
    the coded items sharing a label with the sample and M the others,
    sign(|M| * sum_P b - |P| * sum_M b) (0 where that is a tie)."""
    shares = (labels.float() @ code_labels.float().T > 0).float()  # [B, N]
    codes = codes.float()
    positive_sum = shares @ codes
    negative_sum = codes.sum(dim=0, keepdim=True) - positive_sum
    positives = shares.sum(dim=1, keepdim=True)
    negatives = codes.shape[0] - positives
    return torch.sign(negatives * positive_sum - positives * negative_sum)


def pgd_linf(output: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, targets: torch.Tensor,
             eps: float, step: float, steps: int, random_start: bool,
             box: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             generator: torch.Generator) -> torch.Tensor:
    """L-inf PGD on normalised `images` minimising mean(tanh(output(x')) * targets), with `eps`
    and `step` in pixel units: every iterate stays within eps pixels of the image and inside the
    valid pixel range (`box` = low, high, per-pixel factor, as `ImageSource.pixel_box`). The
    gradient is taken with respect to the images only (no parameter gradient accumulates); the
    caller chooses the network's mode."""
    low, high, per_pixel = (part.to(images.device) for part in box)
    eps_input, step_input = eps * per_pixel, step * per_pixel
    lower = torch.maximum(images - eps_input, low)
    upper = torch.minimum(images + eps_input, high)
    adversarial = images.detach().clone()
    if random_start and eps > 0:
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1
        adversarial = adversarial + noise.to(images.device) * eps_input
    adversarial = torch.max(torch.min(adversarial, upper), lower).detach()
    for _ in range(steps if eps > 0 else 0):
        adversarial.requires_grad_(True)
        objective = (torch.tanh(output(adversarial)) * targets).mean()
        (gradient,) = torch.autograd.grad(objective, adversarial)
        adversarial = adversarial.detach() - step_input * gradient.sign()
        adversarial = torch.max(torch.min(adversarial, upper), lower).detach()
    return adversarial


def adversarial_start_epoch(adv_start: float, epochs: int) -> int:
    """The first epoch (0-based) with the adversarial term: round(adv_start x epochs), at most the
    last epoch, so a run of any length ends adversarially (60 epochs: 46, the last 14 of 60 as
    30 of 130)."""
    return min(int(epochs) - 1, int(math.floor(adv_start * int(epochs) + 0.5)))


class _BaseContext:
    """The run's context as the base method sees it: the same run, with the base's own
    configuration (training settings plus the base's parameters) as `config`."""

    def __init__(self, ctx: TrainContext, config: dict[str, Any]) -> None:
        self._ctx = ctx
        self.config = config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _base_class(name: Any) -> type[HashMethod]:
    from methods import get_method

    if name == CgAT.name:
        raise UserError("cgat: base=cgat is not valid; choose the hashing method to wrap, e.g. base=csq")
    return get_method(str(name))


def base_settings(base: type[HashMethod], given: Any, pretrained: bool = False) -> dict[str, Any]:
    """Every parameter of the base: its defaults, then the `base_settings` given, then its rules
    resolved; UserError on a key the base lacks or a value outside its choices."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise UserError(f"cgat: base_settings={given!r} must map the base's settings to values, e.g. "
                        f'base_settings={{"lambda_q": 0.001}}')
    settings = {key: param.default for key, param in base.params.items()}
    for key, value in given.items():
        param = base.params.get(key)
        if param is None:
            raise UserError(f"cgat: base_settings names '{key}', which {base.name} does not have; valid: "
                            f"{', '.join(sorted(base.params)) or 'none'}")
        if param.choices is not None and value not in param.choices:
            raise UserError(f"cgat: base_settings {key}={value!r} is not valid for {base.name}; choose "
                            f"from {', '.join(map(str, param.choices))}")
        settings[key] = value
    resolved = base.resolve_rules(dict(settings), pretrained)
    return {key: resolved[key] for key in base.params}


class CgAT(HashMethod):
    name = "cgat"
    summary = ("Center-guided adversarial training around a base method: PGD towards -b*, center "
               "codes from a code memory")
    reference = ("Wang et al., CgAT: Center-Guided Adversarial Training for Deep Hashing-Based Retrieval, "
                 "WWW 2023")
    label_keys = ("base",)
    params = {
        "base": Param("csq", "the registered hashing method wrapped (its loss, hooks, codes and centers)",
                      source=f"{_SOURCE} fine-tunes DPSH by default, which this suite lacks; CSQ is one of "
                             "its losses (model/hashing_loss.py)"),
        "base_settings": Param({}, "the base's own settings, as a mapping (unset keys: the base's defaults)",
                               source="the base method's sources"),
        "eps": Param(8 / 255, "training attack budget in pixel units (L-inf)",
                     source=f"{_SOURCE}: epsilon 8/255"),
        "step": Param(2 / 255, "PGD step in pixel units", source=f"{_SOURCE}: step 2/255"),
        "steps": Param(7, "PGD iterations per training step", source=f"{_SOURCE}: iteration 7"),
        "random_start": Param(True, "start PGD from a uniform point in the budget",
                              source=f"{_SOURCE}: randomize=True"),
        "adv_start": Param(100 / 130, "fraction of the epochs after which the adversarial term is on",
                           source="deviation: the official code trains the base (100 epochs) and "
                                  "fine-tunes its checkpoint adversarially (30 epochs, SGD lr 1e-2); here "
                                  "one run switches the term on at 100/130 of its epochs under the run's "
                                  "optimizer and schedule"),
    }
    native = {}
    native_source = ("none applied: the official fine-tuning stage uses SGD lr 1e-2, momentum 0.9, "
                     "weight decay 5e-4, batch 32, lr x0.1 at 1/2 and 3/4 of its 30 epochs, and the "
                     "base trains with its own; one run has one optimizer, so a native run keeps the "
                     "shared defaults")
    retrieval_output = "the base method's retrieval output"
    collects_codes = True  # passed on to a base that collects them (CRH); unused otherwise

    @classmethod
    def resolve_rules(cls, config: dict[str, Any], pretrained: bool) -> dict[str, Any]:
        base = _base_class(config.get("base", "csq"))
        return {**config, "base_settings": base_settings(base, config.get("base_settings"), pretrained)}

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        base = _base_class(config["base"])
        adv_start = float(config["adv_start"])
        if not 0.0 <= adv_start < 1.0:
            raise UserError(f"cgat: adv_start={config['adv_start']} must lie in [0, 1) (default 100/130)")
        for key in ("eps", "step"):
            if not float(config[key]) >= 0:
                raise UserError(f"cgat: {key}={config[key]} must be >= 0 (pixel units, e.g. 8/255)")
        if int(config["steps"]) < 0:
            raise UserError(f"cgat: steps={config['steps']} must be >= 0")
        base.check(cls.base_config(config, task), task)

    @staticmethod
    def base_config(config: dict[str, Any], task: Task | None = None) -> dict[str, Any]:
        """The base's configuration: the run's training settings plus the base's parameters."""
        base = _base_class(config["base"])
        training = {key: value for key, value in config.items() if key in TRAINING_PARAMS}
        return {**training, **base_settings(base, config.get("base_settings"),
                                            bool(task.pretrained) if task is not None else False)}

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.base_class = _base_class(config["base"])
        self.base_cfg = self.base_config(config, task)
        self.base = self.base_class(self.base_cfg, task)
        self.owned["base"] = self.base.owned  # moved, trained, switched and kept with the run
        self.owned_lr_scale = self.base.owned_lr_scale
        self.adv_start_epoch = adversarial_start_epoch(float(config["adv_start"]), task.epochs)
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [task.seed, _SEED_TAG]).generate_state(1)[0]))
        self.memory_index = np.zeros(0, dtype=np.int64)
        self.memory_codes: torch.Tensor | None = None
        self.memory_labels: torch.Tensor | None = None
        self.adversarial_steps = 0

    def _view(self, ctx: TrainContext) -> _BaseContext:
        return _BaseContext(ctx, self.base_cfg)

    # ------------------------------------------------------------------ the code memory
    def setup(self, ctx: TrainContext) -> None:
        self.base.setup(self._view(ctx))
        self.memory_index = np.sort(np.asarray(ctx.train_indices, dtype=np.int64))
        self.memory_labels = torch.as_tensor(ctx.labels_of(self.memory_index), dtype=torch.float32,
                                             device=ctx.device)
        self.memory_codes = self._codes_of(ctx, self.memory_index)

    def _codes_of(self, ctx: TrainContext, indices: np.ndarray) -> torch.Tensor:
        """±1 codes of dataset items as the base retrieves them, from the current network."""
        features = torch.as_tensor(ctx.encode_with(ctx.model.backbone, indices), dtype=torch.float32,
                                   device=ctx.device)
        self.base.owned.eval()
        codes = []
        with torch.no_grad():
            for part in torch.split(features, 1024):
                codes.append(self.base.retrieval_code(ctx.model.hash_layer(part).float(), part))
        self.base.owned.train()
        return torch.where(torch.cat(codes) >= 0, 1.0, -1.0)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        """Memory rows of dataset items (training items only)."""
        positions = np.searchsorted(self.memory_index, np.asarray(indices, dtype=np.int64))
        if (positions >= len(self.memory_index)).any() or not np.array_equal(
                self.memory_index[np.minimum(positions, len(self.memory_index) - 1)], indices):
            raise RuntimeError("cgat: a batch holds items outside the training split's code memory")
        return torch.as_tensor(positions, dtype=torch.long)

    def centers_for(self, labels: torch.Tensor) -> torch.Tensor:
        assert self.memory_codes is not None and self.memory_labels is not None
        return center_codes(labels.to(self.memory_codes.device), self.memory_codes, self.memory_labels)

    # ------------------------------------------------------------------ the training step
    def _output(self, ctx: TrainContext) -> Callable[[torch.Tensor], torch.Tensor]:
        def output(images: torch.Tensor) -> torch.Tensor:
            features = ctx.model.features(images).float()
            return self.base.attack_output(ctx.model.hash_layer(features).float(), features)
        return output

    def adversarial_images(self, ctx: TrainContext, images: torch.Tensor,
                           targets: torch.Tensor) -> torch.Tensor:
        """The batch attacked as CgAT trains against it (the network in the mode the loop left it)."""
        box = ctx.pixel_box()
        if box is None:
            raise UserError("cgat: the training images declare no normalisation, so a pixel budget "
                            "cannot be applied")
        c = self.config
        return pgd_linf(self._output(ctx), images, targets, float(c["eps"]), float(c["step"]),
                        int(c["steps"]), bool(c["random_start"]), box, self.generator)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        base_loss = self.base.loss(h, labels, self._view(ctx))
        ctx.log("base", base_loss.detach())
        batch = ctx.batch
        if batch is None or self.memory_codes is None:
            return base_loss
        adversarial = ctx.epoch >= self.adv_start_epoch
        if adversarial:
            x_adv = self.adversarial_images(ctx, batch.images, self.centers_for(labels))
        with torch.no_grad():
            benign = self.base.retrieval_code(h.detach(), batch.features.detach())
            self.memory_codes[self.rows(batch.indices).to(self.memory_codes.device)] = torch.where(
                benign >= 0, 1.0, -1.0).to(self.memory_codes.dtype)
        if not adversarial:
            return base_loss
        targets = self.centers_for(labels)
        term = -(torch.tanh(self._output(ctx)(x_adv)) * targets).mean()
        ctx.log("adversarial", term.detach())
        self.adversarial_steps += 1
        return base_loss + term

    # ------------------------------------------------------------------ the base's hooks
    def after_step(self, ctx: TrainContext) -> None:
        self.base.after_step(self._view(ctx))

    def selectable_from(self) -> int:
        """Checkpoints before the adversarial term are the base method's, not CgAT's: selection
        keeps the best validation epoch from the first adversarial epoch on (the official code
        evaluates the adversarially fine-tuned model)."""
        return self.adv_start_epoch + 1

    def on_epoch_end(self, epoch: int, codes: torch.Tensor | None, labels: torch.Tensor | None,
                     ctx: TrainContext) -> dict[str, Any] | None:
        collects = type(self.base).collects_codes
        return self.base.on_epoch_end(epoch, codes if collects else None, labels if collects else None,
                                      self._view(ctx))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return self.base.parameter_groups(lr, weight_decay)

    def retrieval_code(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.base.retrieval_code(h, features)

    def attack_output(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.base.attack_output(h, features)

    def class_centers(self) -> torch.Tensor | None:
        return self.base.class_centers()

    def record(self) -> dict[str, Any]:
        return {"base": self.base_class.name, "base_settings": dict(self.config["base_settings"]),
                "adv_start": float(self.config["adv_start"]), "adv_start_epoch": self.adv_start_epoch + 1,
                "adversarial_epochs": max(0, self.task.epochs - self.adv_start_epoch),
                "adversarial_steps": self.adversarial_steps, "base_record": self.base.record()}

    def describe_api(self) -> dict[str, Any]:
        api = super().describe_api()
        base_api = self.base.describe_api()
        api["retrieval_output"] = (f"{self.retrieval_output} ({self.base_class.name}: "
                                   f"{base_api['retrieval_output']})")
        api["base"] = {"method": self.base_class.name, **base_api}
        if "reconstruction" in base_api:
            api["reconstruction"] = {f"base {key}": value
                                     for key, value in base_api["reconstruction"].items()}
        return api
