"""The checks a config's ``[compression]`` section gets when it loads, naming the item."""

from __future__ import annotations

from collections.abc import Sequence

from .chain import Chain
from .link import Compression
from .names import parse_item, valid_items


def check_chains(up: Sequence[str], down: Sequence[str]) -> None:
    """``ValueError`` naming ``compression.up[i]`` / ``compression.down[i]`` and the cause."""
    for key, items in (("compression.up", up), ("compression.down", down)):
        for i, item in enumerate(items):
            try:
                parse_item(item)
            except ValueError as e:
                raise ValueError(
                    f"{key}[{i}] = {item!r}: {e}; valid items: {valid_items()}"
                ) from None
        try:
            Chain.parse(items)
        except ValueError as e:  # the order: "compression item i 'x': ..."
            raise ValueError(f"{key}: {e}") from None
    Compression(up, down)  # what the run refuses (a sparsifier on the downlink)
