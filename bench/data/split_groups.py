"""The `by_group` split protocol: each part is the items of one named group.

For cards whose source already names every item's part (the generated Fashion-MNIST cards
carry groups query / database+train / validation / validation_database / database), the
split draws nothing: `split.<part>: <group>` selects the items whose '+'-joined group names
include <group> (a list of names selects their union). The split seed therefore does not
change a by_group split; the generator's seed (in the card's options) does.

Called by `bench.data.splits.make_split` for `split.protocol: by_group`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.data.loading import DatasetCard, ImageSource
from bench.errors import UserError

REQUIRED_PARTS = ("query", "train", "validation", "database")
OPTIONAL_PARTS = ("validation_database",)


def group_members(groups: np.ndarray, wanted: str | list[str]) -> np.ndarray:
    """Sorted indices of the items whose group names ('+'-joined) include any wanted name."""
    names = {wanted} if isinstance(wanted, str) else set(wanted)
    unique, inverse = np.unique(groups, return_inverse=True)
    hit = np.array([bool(names & set(u.split("+"))) for u in unique.tolist()], dtype=bool)
    return np.flatnonzero(hit[inverse]).astype(np.int64)


def draw_by_group(card: DatasetCard, source: ImageSource) -> dict[str, np.ndarray]:
    """Index arrays of the split parts the card names; a part the card omits uses the group
    of its own name. Refuses a group with no items, naming the groups the source has."""
    spec: dict[str, Any] = card.split
    present = sorted({name for g in np.unique(source.groups).tolist() for name in g.split("+")})
    parts: dict[str, np.ndarray] = {}
    for part in REQUIRED_PARTS + OPTIONAL_PARTS:
        if part in OPTIONAL_PARTS and part not in spec and part not in present:
            continue
        wanted = spec.get(part, part)
        if not isinstance(wanted, (str, list)) or (isinstance(wanted, list) and not wanted):
            raise UserError(f"{card.path}: split.{part} = {wanted!r}; name a group (or a list of groups)"
                            f" of: {', '.join(present)}")
        members = group_members(source.groups, wanted)
        if len(members) == 0:
            raise UserError(f"{card.path}: split.{part} = {wanted!r} selects no items; "
                            f"the source's groups are: {', '.join(present)}")
        parts[part] = members
    return parts
