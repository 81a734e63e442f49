"""Shared backbones and the linear hash layer every method trains through.

Pretrained ImageNet weights are never downloaded: they load from a file the user names or
from torch's local hub cache, and a run without them must say `--no-pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import UserError


class SmallCNN(nn.Module):
    """Three conv blocks for 28-32 pixel images. Width 16 trains ~2.6x faster than width 32 on
    a CPU core (measured here), which is what lets the full reproduction fit in about an hour
    on two cores; it still separates Fashion-MNIST's classes well."""

    def __init__(self, in_channels: int, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width), nn.MaxPool2d(2),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * width, feature_dim), nn.ReLU(inplace=True),
        )
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyCNN(SmallCNN):
    """A narrower SmallCNN for unit tests on 12-pixel synthetic images."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, width=8, feature_dim=32)


class MLP(nn.Module):
    """For feature-vector cards (documents as TF-IDF rows): V -> 1000 -> 1000, ReLU after each
    layer; the hash layer reads the last 1000 units (widths: methods-wave3 spec, section 9)."""

    def __init__(self, in_features: int, hidden: int = 1000) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _torchvision_backbone(arch: str, weights_file: str | None, pretrained: bool) -> nn.Module:
    from torchvision import models

    builder = getattr(models, arch)
    net = builder(weights=None)
    if pretrained:
        state = _load_local_weights(arch, weights_file)
        net.load_state_dict(state)
    if arch == "alexnet":
        # Keep AlexNet's two hidden FC layers as the feature extractor (HashNet/DPN convention).
        net.classifier = nn.Sequential(*list(net.classifier.children())[:-1])
        net.feature_dim = 4096
    else:
        net.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
    return net


def _load_local_weights(arch: str, weights_file: str | None) -> dict:
    candidates: list[Path] = []
    if weights_file:
        candidates.append(Path(weights_file))
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    if hub.is_dir():
        candidates.extend(sorted(hub.glob(f"{arch}-*.pth")))
    for path in candidates:
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # corrupt file: say which
                raise UserError(f"cannot load pretrained weights {path}: {error}") from None
    raise UserError(
        f"no local ImageNet weights for {arch} (looked in {weights_file or '--weights not set'} "
        f"and {hub}); pass --weights FILE, or --no-pretrained to train from scratch"
    )


BACKBONES: dict[str, str] = {
    "tiny_cnn": "3-block CNN, width 8 (unit tests)",
    "small_cnn": "3-block CNN, width 16, 128-d features (28-32 px images)",
    "alexnet": "torchvision AlexNet, fc7 features (224 px)",
    "resnet18": "torchvision ResNet-18 (224 px)",
    "resnet34": "torchvision ResNet-34 (224 px; CRH paper's backbone)",
    "resnet50": "torchvision ResNet-50 (224 px; CSQ paper's backbone)",
    "mlp": "V -> 1000 -> 1000 MLP, ReLU (feature-vector cards: TF-IDF documents)",
}
PRETRAINABLE = {"alexnet", "resnet18", "resnet34", "resnet50"}
FEATURE_BACKBONES = {"mlp"}  # take a feature vector [B, V]; every other backbone takes images


def check_backbone_fits(card: Any, name: str) -> None:
    """Refuse, in one line, an image backbone on a feature-vector card or the reverse."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; valid backbones: {', '.join(BACKBONES)}")
    takes_features = name in FEATURE_BACKBONES
    if takes_features == card.is_image:
        wanted = ", ".join(sorted(FEATURE_BACKBONES) if not card.is_image
                           else sorted(set(BACKBONES) - FEATURE_BACKBONES))
        raise UserError(f"backbone '{name}' takes {'feature vectors' if takes_features else 'images'}; "
                        f"dataset '{card.name}' has {'images' if card.is_image else 'feature vectors'} "
                        f"(valid backbones for it: {wanted})")


def build_backbone(
    name: str, in_channels: int, pretrained: bool = False, weights_file: str | None = None
) -> nn.Module:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; valid backbones: {', '.join(BACKBONES)}")
    if name == "tiny_cnn":
        return TinyCNN(in_channels)
    if name == "small_cnn":
        return SmallCNN(in_channels)
    if name == "mlp":  # in_channels is the feature vector's width (card.input_width)
        return MLP(in_channels)
    if in_channels != 3:
        raise UserError(f"backbone '{name}' needs 3-channel images; this dataset has {in_channels}")
    return _torchvision_backbone(name, weights_file, pretrained)


class HashNetwork(nn.Module):
    """Backbone features -> linear hash layer with `bits` real outputs (h; codes are sign(h))."""

    def __init__(self, backbone: nn.Module, bits: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.hash_layer = nn.Linear(backbone.feature_dim, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash_layer(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def parameter_groups(model: HashNetwork, backbone_lr_scale: float) -> list[dict]:
    """Optimizer groups: a pretrained backbone is often tuned at a fraction of the head's rate."""
    return [
        {"params": list(model.backbone.parameters()), "lr_scale": backbone_lr_scale},
        {"params": list(model.hash_layer.parameters()), "lr_scale": 1.0},
    ]


ModelFactory = Callable[[int], nn.Module]
