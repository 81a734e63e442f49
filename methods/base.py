"""What a hashing method is to the training loop.

A method is one small class: its parameters (with defaults and their sources), the training
settings its paper used ("native" protocol), the knobs a tuner may search, its loss, optional
hooks, and any state it owns (modules such as a BatchNorm on the hash output, learnable
centers, a second head or a momentum encoder). The loop in `bench/training/train.py` never changes when
a method is added, and this package never imports the loop: what a hook sees is the
`TrainContext` protocol of `methods/context.py`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import UserError
from methods.context import Batch, Param, Task, TrainContext

__all__ = ["HARMONISED", "RECONSTRUCTION", "SCALE_RULES", "SHARED_SEARCH", "TRAINING_PARAMS", "Batch",
           "HashMethod", "Param", "Task", "TrainContext", "cosine_scale", "scale_default"]

# How a parameter's `source` (or a piece in `HashMethod.reconstructed`) says that it was not read
# from the paper or its code but reconstructed ("reconstruction: what was assumed and from what").
RECONSTRUCTION = "reconstruction:"

# Training settings every method has. A method's `native` dict replaces some of these with
# its paper's values; the "harmonised" protocol replaces them with one shared set.
TRAINING_PARAMS: dict[str, Param] = {
    "optimizer": Param("adam", "optimizer", choices=("adam", "sgd", "rmsprop")),
    "lr": Param(1e-3, "learning rate of the hash layer"),
    "backbone_lr_scale": Param(1.0, "backbone learning rate as a fraction of lr"),
    "weight_decay": Param(1e-5, "L2 weight decay"),
    "momentum": Param(0.9, "momentum (sgd, rmsprop)"),
    "beta1": Param(0.9, "Adam beta1"),
    "beta2": Param(0.999, "Adam beta2"),
    "lr_schedule": Param("cosine", "learning-rate schedule", choices=("constant", "step", "cosine")),
    "lr_min": Param(0.0, "final learning rate of the cosine schedule"),
    "lr_step_at": Param(0.5, "step schedule: fraction of training at which lr is multiplied"),
    "lr_gamma": Param(0.1, "step schedule: multiplier"),
    "epochs": Param(None, "training epochs (default: the dataset card's schedule)"),
    "batch_size": Param(128, "training batch size"),
    "eval_every": Param(None, "validate every N epochs for model selection (default: card)"),
    "grad_clip": Param(0.0, "clip the gradient norm of all trained parameters at this value (0: off)"),
}

# The "harmonised" protocol: one optimizer and schedule for every method, so that
# differences between methods can be attributed to their losses.
HARMONISED: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "backbone_lr_scale": 1.0,
    "weight_decay": 1e-5,
    "beta1": 0.9,
    "beta2": 0.999,
    "lr_schedule": "cosine",
    "lr_min": 1e-6,
    "batch_size": 128,
}

# One search range per knob that several methods share (issue 26, spec R2), so that no method
# can reach a value another cannot: the cosine scale s (CRH, OrthoHash, MDS), the cosine margin
# m (CRH, OrthoHash), the quantization weight (CSQ, SHC, MDS, CRH) and the learning rate (all).
# Every official default, resolved for C in {10..555} and K in {16, 32, 64}, lies inside.
SHARED_SEARCH: dict[str, tuple] = {
    "lr": ("log", 1e-4, 1e-2),
    "scale": ("log", 1.0, 16.0),
    "margin": ("float", 0.0, 1.0),
    "lambda_q": ("log", 1e-5, 1.0),
}
# Hard bounds: edges a value cannot pass (a negative margin is another loss), exempt from the
# edge-widening rule of the tuner.
HARD_EDGES: dict[str, tuple[float | None, float | None]] = {"margin": (0.0, None)}

# Named rules for a cosine-softmax scale s: sqrt(K) (OrthoHash's supplement Table 1, MDS) and
# the AdaCos fixed scale sqrt(2) ln(C - 1) (OrthoHash's supplement D.2, CRH's default).
SCALE_RULES = ("sqrt_k", "adacos")


def cosine_scale(value: Any, bits: int, classes: int, default: str) -> tuple[float, str]:
    """(s, rule) for a `scale` setting: None (the method's `default` rule), a rule name from
    SCALE_RULES, or a positive number. sqrt(2) ln(C-1) vanishes at C = 2; two classes use C = 3."""
    rule = default if value is None else value
    if rule == "sqrt_k":
        return math.sqrt(bits), "sqrt(K)"
    if rule == "adacos":
        return math.sqrt(2) * math.log(max(classes - 1, 2)), (
            "sqrt(2)*ln(C-1)" if classes > 2 else "sqrt(2)*ln(2) (C=2: ln(C-1)=0)")
    try:
        number = float(rule)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(rule, bool) or not number > 0 or not math.isfinite(number):
        raise UserError(f"scale={value!r} is not valid; give a positive number or one of "
                        f"{', '.join(SCALE_RULES)} (default: {default})")
    return number, "set"


def scale_default(key: str, value: Any, task: Task, rule: str) -> Any:
    """`resolve_default` for a method with a cosine-softmax `scale` whose unset value follows
    `rule` (see `cosine_scale`): the number behind `scale`; any other setting passes unchanged."""
    return cosine_scale(value, task.bits, task.num_classes, rule)[0] if key == "scale" else value


class HashMethod:
    """Base class. Subclasses set the ClassVars and implement `loss`; hooks are optional.

    State a method owns goes into `self.owned` (an `nn.ModuleDict`): the loop moves it to the
    run's device, optimises its trainable parameters (`parameter_groups`), switches it between
    train and eval mode with the network, keeps it with the selected checkpoint, and encodes
    retrieval codes through `retrieval_code`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    native: ClassVar[dict[str, Any]] = {}
    native_source: ClassVar[str] = ""
    # What `bench tune` searches, next to the defaults it starts from: setting -> (scale, low,
    # high) with scale "log" / "float" / "int", or ("choice", (values...)). The learning rate is
    # searched for every method so that each gets the same budget on the same knob.
    search_space: ClassVar[dict[str, tuple]] = {"lr": SHARED_SEARCH["lr"]}
    # Set to True to receive the sign codes and labels of every training sample seen in the
    # epoch at `on_epoch_end` (collected during the training pass: no extra forward pass).
    collects_codes: ClassVar[bool] = False
    # Which output is the retrieval code, in words, for the record (see `retrieval_code`).
    retrieval_output: ClassVar[str] = "sign(h), h = the shared linear hash layer's output"
    # Owned modules' learning rate as a multiple of the run's `lr` (default `parameter_groups`).
    owned_lr_scale: ClassVar[float] = 1.0
    # Settings that name a configuration in the report even at their default (a wrapper's base
    # method): "CgAT (base=csq)" beside "CgAT (base=crh)", never a bare "CgAT".
    label_keys: ClassVar[tuple[str, ...]] = ()
    # Pieces of the method its sources do not settle (piece -> what was assumed), for a method
    # rebuilt from an abstract or a predecessor's code. Together with every parameter whose
    # `source` starts with RECONSTRUCTION they make the method a reconstruction: `bench list`
    # names the unknowns, the record carries them (`method_api.reconstruction`) and the report
    # marks the method's rows. Empty for a method read from its paper or official code.
    reconstructed: ClassVar[dict[str, str]] = {}
    # The unsupervised regime (issue 31): False means the method never sees a label. The loop then
    # hands `loss` labels of shape [B, 0], `ctx.labels_of` raises, `class_centers` must be None,
    # training images come through the run's seeded augmentation (`ctx.augment`) and the
    # checkpoint is the last epoch's (validation mAP needs labels) unless the card says otherwise.
    supervised: ClassVar[bool] = True
    # Augmented views of each training image an unsupervised method's step sees (1 or 2): with 2,
    # the loop forwards both views in one batch; `h` is the first view's and `ctx.batch.views`
    # holds every view's hash output.
    views: ClassVar[int] = 1
    # False: no gradient training. The loop runs no epoch and builds no optimizer; the method fits
    # whatever it needs in `setup` (LSH's projection, ITQ's PCA and rotation) and is selected as
    # fitted. The epoch budget in its configuration is then only the table it belongs to.
    trains: ClassVar[bool] = True
    # True: retrieval codes come from `encode_inputs` (the method's own function of the network's
    # normalised inputs) instead of the network; for methods that hash the inputs themselves.
    encodes_inputs: ClassVar[bool] = False
    # What the method can hash: "images", "features" (a feature card's vectors, e.g. TF-IDF
    # documents) or both. A method that refuses one kind says so in `setup`, in one line; tests
    # that run every method pick a card of a kind it takes (`example_dataset`).
    inputs: ClassVar[tuple[str, ...]] = ("images", "features")

    @classmethod
    def example_dataset(cls) -> str:
        """The small synthetic card of a kind this method takes (for tests and smoke runs)."""
        return "synthetic" if "images" in cls.inputs else "synthetic-documents"

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        self.config = config
        self.task = task
        self.owned = nn.ModuleDict()

    @classmethod
    def reconstruction(cls) -> dict[str, str]:
        """What of this method is reconstructed, not read (unknown -> what was assumed): the
        `reconstructed` pieces, then each parameter whose source starts "reconstruction:"."""
        unknowns = dict(cls.reconstructed)
        for key, param in cls.params.items():
            if param.source.startswith(RECONSTRUCTION):
                unknowns[key] = param.source[len(RECONSTRUCTION):].strip()
        return unknowns

    @classmethod
    def resolve_rules(cls, config: dict[str, Any], pretrained: bool) -> dict[str, Any]:
        """Settings whose value follows from the run itself (e.g. HCLM's similarity features
        from whether the backbone is pretrained), fixed when the configuration is built so that
        the run id and the record carry the value used. Default: nothing to resolve."""
        return config

    @classmethod
    def resolve_default(cls, key: str, value: Any, task: Task) -> Any:
        """The concrete number behind a rule-valued setting (e.g. scale None -> sqrt(K)), so the
        tuner can start every study from the resolved default; other values pass unchanged."""
        return value

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        """Refuse impossible settings before any training (raise bench.errors.UserError)."""

    def setup(self, ctx: TrainContext) -> None:
        """Before the first epoch (e.g. build centers; SHC trains its classifier here)."""

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """Scalar loss of a batch. `h` is the hash layer's real output [B, K]; `labels` is the
        multi-hot float matrix [B, C] ([B, 0] for an unsupervised method); `ctx.batch` holds the
        images, indices and backbone features too (and every augmented view's output for an
        unsupervised method). Components may be logged with `ctx.log(name, value)`."""
        raise NotImplementedError

    def after_step(self, ctx: TrainContext) -> None:
        """After each optimizer step (e.g. a momentum encoder's update, a memory bank write)."""

    def on_epoch_end(
        self, epoch: int, codes: torch.Tensor | None, labels: torch.Tensor | None, ctx: TrainContext
    ) -> dict[str, Any] | None:
        """After each epoch; what it returns is stored in that epoch's history entry."""
        return None

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups for the trainable parameters of `self.owned` (none by default)."""
        trainable = [p for p in self.owned.parameters() if p.requires_grad]
        if not trainable:
            return []
        return [{"params": trainable, "lr": lr * self.owned_lr_scale, "weight_decay": weight_decay}]

    def retrieval_code(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The real-valued output whose sign is the retrieval code, with `self.owned` in eval
        mode. Default: the hash layer's output; OrthoHash returns BN(h); a classify-then-hash
        baseline returns the center of its predicted class."""
        return h

    def encode_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """With `encodes_inputs`: the real-valued output [B, K] whose sign is the retrieval code of
        a batch of the network's inputs (normalised images, or a card's feature vectors)."""
        raise NotImplementedError

    def attack_output(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The differentiable output an adversarial attack on the codes pushes (bench.evaluation.attack):
        by default `retrieval_code`; a method whose code is not differentiable in its input
        (an argmax) returns a smooth stand-in whose sign agrees with its code."""
        return self.retrieval_code(h, features)

    def selectable_from(self) -> int:
        """The first epoch (1-based) whose checkpoint validation selection may keep: 1, unless
        the training changes character mid-run and the earlier checkpoints are another model
        (CgAT: only checkpoints after its adversarial term switched on are CgAT's)."""
        return 1

    def class_centers(self) -> torch.Tensor | None:
        """The ±1 target code of each class [C, K], for center-based methods (else None)."""
        return None

    def record(self) -> dict[str, Any]:
        """Extra method state to keep in the run record (histories, final centers...)."""
        return {}

    def describe_api(self) -> dict[str, Any]:
        """What the record keeps about the method's outputs and owned state."""
        modules = {}
        for key, module in self.owned.items():
            parameters = list(module.parameters())
            modules[key] = {
                "type": type(module).__name__,
                "parameters": int(sum(p.numel() for p in parameters)),
                "trainable": int(sum(p.numel() for p in parameters if p.requires_grad)),
            }
        api = {"retrieval_output": self.retrieval_output, "owned_modules": modules,
               "owned_lr_scale": self.owned_lr_scale}
        unknowns = self.reconstruction()
        if unknowns:  # only reconstructed methods carry the key: other records keep their shape
            api["reconstruction"] = unknowns
        return api
