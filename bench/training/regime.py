"""What the loop does differently for a method that learns without labels (`supervised = False`)
or does not train at all (`trains = False`), issue 31. Nothing here names a method.

- **Labels.** An unsupervised method's `loss` gets labels of shape [B, 0] (so does its epoch
  hook), `ctx.labels_of` raises a UserError, and its `class_centers` must be None. The
  evaluator still scores its codes against the card's labels.
- **Views.** Its training images come through the run's declared augmentation
  (`Augmentation`): a square crop of 0.5 to 1 of the image area resized back, a shift of up to
  2 pixels each way, a horizontal flip with probability 1/2 and Gaussian noise of 0.02 (pixel
  units), clipped to the source's pixel box (`ImageSource.pixel_box`); a card may change these
  (its `augmentation` key, e.g. the synthetic card, whose classes are random pixel patterns that
  no crop or flip preserves, uses noise only). The draws come from a
  generator seeded from the run's seed, apart from the streams of initial weights and data
  order, so the same run gives the same views. A method that asks for two views
  (`views = 2`) gets both forwarded in one batch; one that declares `views = 0` takes the
  training batch unaugmented (a method that reconstructs its input, e.g. a document's term
  vector, on cards whose inputs no image augmentation applies to).
- **Selection.** Validation mAP needs labels, so the checkpoint is the last epoch's, unless the
  card declares `unsupervised_selection: validation`. The validation mAP is still computed at
  the card's cadence, for the history and for a tuner's score (a tuner does read validation
  labels, and the record says so). A method that does not train is selected as fitted.
- **Record.** Such a run's record carries `regime` (what training saw) and `selection.rule`;
  records of supervised, trained methods keep their shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.cards import DatasetCard
from bench.errors import UserError

_AUGMENT_TAG = 0x41554731  # "AUG1": the augmentation stream's own seed word

# Selection rules, as the record names them.
VALIDATION, LAST_EPOCH, FITTED = "validation", "last-epoch", "fitted"
RULE_TEXT = {
    VALIDATION: "best validation mAP",
    LAST_EPOCH: ("last epoch (validation mAP needs labels; it is computed for the history and a "
                 "tuner's score only)"),
    FITTED: "as fitted in setup (the method does not train)",
}


@dataclass(frozen=True)
class Augmentation:
    """The unsupervised regime's training views (see the module docstring); units are
    fractions of the image area, pixels, a probability and pixel values in [0, 1]."""

    crop_area: tuple[float, float] = (0.5, 1.0)
    shift: int = 2
    flip: float = 0.5
    noise: float = 0.02

    @classmethod
    def of_card(cls, card: DatasetCard) -> Augmentation:
        """The default views, with what the card's `augmentation` key changes (checked)."""
        changes = dict(card.augmentation)
        where = f"dataset card {card.path or card.name}: augmentation"
        unknown = sorted(set(changes) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}'; valid: "
                            f"{', '.join(cls.__dataclass_fields__)}")
        try:
            if "crop_area" in changes:
                low, high = (float(v) for v in changes["crop_area"])
                if not 0 < low <= high <= 1:
                    raise ValueError
                changes["crop_area"] = (low, high)
            if "shift" in changes and (int(changes["shift"]) != changes["shift"] or changes["shift"] < 0):
                raise ValueError
            for key in ("flip", "noise"):
                if key in changes and not 0 <= float(changes[key]) <= (1 if key == "flip" else math.inf):
                    raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{where}: {changes} is not valid (crop_area: [low, high] in (0, 1]; "
                            f"shift: pixels >= 0; flip: a probability; noise: >= 0)") from None
        return cls(**changes)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "crop_area": list(self.crop_area),
                "order": "crop (square, resized back) + shift + flip in one bilinear resampling "
                         "(outside the image: pixel value 0), then noise, then clip to the pixel box"}

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 box: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """One view of a batch [B, C, H, W] of normalised images; `box` = (low, high, 1/std) per
        channel, from the source (None: no clipping, noise in input units)."""
        if images.ndim != 4:
            raise UserError(f"the unsupervised regime's augmentation needs image batches [B, C, H, W], "
                            f"got shape {tuple(images.shape)}")
        count, _, height, width = images.shape
        low, area = self.crop_area
        # Every draw on the CPU generator, in a fixed order, whatever the device.
        side = torch.sqrt(low + (area - low) * torch.rand(count, generator=generator, dtype=torch.float64))
        centre = 2 * torch.rand(count, 2, generator=generator, dtype=torch.float64) - 1
        centre = centre * (1 - side[:, None])
        flips = torch.rand(count, generator=generator, dtype=torch.float64) < self.flip
        shifts = torch.randint(-self.shift, self.shift + 1, (count, 2), generator=generator)
        noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
        theta = torch.zeros(count, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = torch.where(flips, -side, side)
        theta[:, 1, 1] = side
        theta[:, 0, 2] = centre[:, 0] + 2 * shifts[:, 0] / width
        theta[:, 1, 2] = centre[:, 1] + 2 * shifts[:, 1] / height
        device = images.device
        grid = F.affine_grid(theta.to(torch.float32), list(images.shape), align_corners=False).to(device)
        images = images.float()
        if box is None:
            floor = torch.zeros(1, images.shape[1], 1, 1, device=device)
            top, scale = None, torch.ones_like(floor)
        else:
            floor, top, scale = (v.to(device=device, dtype=torch.float32) for v in box)
        view = F.grid_sample(images - floor, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + floor
        view = view + self.noise * scale * noise.to(device)
        if top is not None:
            view = torch.maximum(torch.minimum(view, top), floor)
        if images.is_contiguous(memory_format=torch.channels_last):
            view = view.contiguous(memory_format=torch.channels_last)
        return view


def augmentation_generator(seed: int) -> torch.Generator:
    """The run's augmentation stream: its own seed, derived from the run's seed."""
    word = int(np.random.SeedSequence([int(seed), _AUGMENT_TAG]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(word % (2**63))


def unlabelled(batches: Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]
               ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """The same batches with labels of shape [B, 0]: nothing of the labels reaches the method."""
    for indices, images, labels in batches:
        yield indices, images, labels[:, :0]


def selection_rule(supervised: bool, trains: bool, card: DatasetCard) -> str:
    """How the run's checkpoint is chosen (VALIDATION, LAST_EPOCH or FITTED)."""
    if not trains:
        return FITTED
    if supervised:
        return VALIDATION
    return VALIDATION if card.unsupervised_selection == VALIDATION else LAST_EPOCH


def check_views(views: int, name: str) -> int:
    if views not in (0, 1, 2):
        raise UserError(f"method {name} declares views = {views}; the loop supplies 0 (the "
                        f"unaugmented batch), 1 or 2 views")
    return int(views)


def regime_record(supervised: bool, trains: bool, views: int, rule: str,
                  augmentation: Augmentation) -> dict[str, Any] | None:
    """What the record says about the regime (None for a supervised method that trains: its
    record keeps the shape it always had)."""
    if supervised and trains:
        return None
    record: dict[str, Any] = {
        "supervised": supervised,
        "training_labels": ("labels of the training split" if supervised else
                            "none: the loss got [B, 0] labels, labels_of refused, no class centers"
                            if trains else "none: fitted on the training inputs, labels_of refused"),
        "trains": trains,
        "selection": RULE_TEXT[rule],
        "evaluation": "the card's labels (the evaluator is unchanged)",
    }
    if rule != VALIDATION:
        record["validation_labels"] = ("read only for the validation mAP the record shows and a "
                                       "tuner's score, never to choose the checkpoint")
    if not supervised and trains:
        record["augmentation"] = (augmentation.record() if views else
                                  "none: the method takes the unaugmented training batch (views = 0)")
        record["views"] = views
    return record


def centers_allowed(supervised: bool, centers: Any, name: str) -> None:
    """An unsupervised method has no class centers (they would be built from labels)."""
    if not supervised and centers is not None:
        raise UserError(f"method {name} is unsupervised but returns class centers; an unsupervised "
                        f"method's class_centers() must be None")
