"""What makes two runs the same run: a canonical form of their identity, free of print formats.

A run id is a hash, so every byte that goes into it must mean the same on every machine and
under every library version. Two things used to leak in:

- values were turned into text with `json.dumps(default=str)`, so a NumPy scalar or a Path
  hashed as whatever that library's `str` printed;
- the backbone was identified by the sha256 of `repr(module)`, and torch words that repr
  differently between releases (2.11 on a GPU image and the pinned 2.14.1 gave the same
  network two ids).

`canonical_json` accepts only JSON's own types (after turning tuples into lists, NumPy
scalars into Python numbers and Paths into POSIX strings) and writes floats with Python's
shortest round-trip `repr`, keys sorted, no spaces; anything else is refused rather than
printed. `architecture_fingerprint` describes a backbone by what determines its numbers:
each submodule's class name and its structural hyperparameters (read as attributes, never
from a repr), and every parameter's and buffer's name and shape.

Architectures that had records before this scheme keep the token their ids were built with
(`LEGACY_ARCHITECTURE_TOKENS`, keyed by the new fingerprint), so existing run ids stay valid;
an edited architecture has a new fingerprint and therefore a new token and new ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import PurePath
from typing import Any

# Attributes of torch.nn modules that fix what a layer computes. Read with getattr, so a
# module that lacks one simply omits it; values are ints, floats, bools, strings or tuples.
STRUCTURAL_ATTRIBUTES = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
    "padding_mode", "output_padding", "in_features", "out_features", "num_features", "eps",
    "momentum", "affine", "track_running_stats", "normalized_shape", "elementwise_affine",
    "output_size", "ceil_mode", "count_include_pad", "return_indices", "p", "inplace",
    "negative_slope", "start_dim", "end_dim", "dim", "approximate",
)

# fingerprint (sha256 of the canonical description, 16 hex) -> the 12-hex token that run ids
# were built with when they hashed `repr(module)` under torch 2.14.1 (sha256, 12 hex). Frozen
# history: tests/test_run_identity.py recomputes every token from the repr on the pinned torch.
LEGACY_ARCHITECTURE_TOKENS: dict[str, str] = {
    "d6695517cd352da2": "ff22d1e226e4",  # tiny_cnn, 1 channel
    "d1dafd85cb4db7fe": "4393904d82ba",  # tiny_cnn, 3 channels
    "06c5e777efe54d28": "e345b6402702",  # small_cnn, 1 channel
    "e4dd5d731e26f5f3": "a3c0024edacd",  # small_cnn, 3 channels
    "1880eaaefa412402": "5f88fe7131ac",  # alexnet, 3 channels
    "b3c22ef6b05415cb": "bf14fe196b4b",  # resnet18, 3 channels
    "e76b93dca3848bf5": "0f41c47be3f7",  # resnet34, 3 channels
    "ff6c2025176e72eb": "dd248e9e066b",  # resnet50, 3 channels
}


def canonical(value: Any, where: str = "value") -> Any:
    """`value` as plain JSON types, or TypeError naming what has no canonical form."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} has no JSON form")
        return float(value)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, dict):
        return {str(key): canonical(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    item = getattr(value, "item", None)  # NumPy / torch scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return canonical(item(), where)
    raise TypeError(f"{where}: a {type(value).__name__} has no canonical form in a run identity")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, floats by Python's round-trip repr (what `json` writes)."""
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def identity_digest(identity: dict[str, Any]) -> str:
    """sha256 (hex) of a run's identity in canonical form. Keys sorted, floats by repr; the
    separators are json's defaults (", ", ": ") because the first run ids were hashed so."""
    text = json.dumps(canonical(identity), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def architecture_description(module: Any) -> list[Any]:
    """Submodules (name, class, structural hyperparameters), then parameters and buffers
    (name, shape): everything about a network's structure that changes its numbers."""
    layers = []
    for name, sub in module.named_modules():
        settings = {key: getattr(sub, key) for key in STRUCTURAL_ATTRIBUTES if hasattr(sub, key)}
        settings = {key: value for key, value in settings.items()
                    if value is None or isinstance(value, (bool, int, float, str, tuple, list))}
        layers.append([name, type(sub).__name__, canonical(settings, name or "module")])
    tensors = [[name, list(tensor.shape)] for name, tensor in module.named_parameters()]
    tensors += [[name, list(tensor.shape)] for name, tensor in module.named_buffers()]
    return [layers, tensors]


@functools.cache
def architecture_fingerprint(name: str, channels: int) -> str:
    """sha256 (16 hex) of the backbone's canonical description. Built on the meta device: no
    weights are allocated or drawn, so the global RNG is untouched."""
    import torch

    from bench.network.backbones import build_backbone

    with torch.device("meta"):
        module = build_backbone(name, channels, pretrained=False)
    return hashlib.sha256(canonical_json(architecture_description(module)).encode()).hexdigest()[:16]


def architecture_token(name: str, channels: int) -> str:
    """What a run id hashes for the backbone: the legacy token of an architecture that had
    records before the canonical scheme, else its fingerprint."""
    fingerprint = architecture_fingerprint(name, channels)
    return LEGACY_ARCHITECTURE_TOKENS.get(fingerprint, fingerprint)
