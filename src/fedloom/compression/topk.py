"""Top-k sparsification: only the ``k`` largest-magnitude coordinates travel.

With error feedback (kept by the chain, see :class:`~.codec.Sparsifier`) the coordinates left
out are added to the next round's update, so small ones are delayed, not lost (Stich et al.,
"Sparsified SGD with Memory", NeurIPS 2018). The indices go sorted and delta-coded in the
smallest of 1, 2 or 4 bytes that holds every gap: at 1% of a vector the gaps average 100, so
2 bytes an index, which a final ``zstd`` shrinks further.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import WireError
from .checks import equal, fields, integer
from .sparse import FractionSparsifier

WIDTHS = (1, 2, 4)


class TopK(FractionSparsifier):
    """``topk:<fraction>``: keep ``round(fraction * n)`` coordinates (at least one)."""

    name = "topk"
    usage = "topk:<fraction in (0, 1]>"

    def select(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, Any], bytes]:
        k = self.count(x.numel())
        # a partial sort (numpy's introselect: 3x faster than torch.topk on 1M values); which
        # of equal magnitudes is kept is the sender's choice, the receiver reads the indices
        mags = np.abs(x.numpy())
        picked = np.argpartition(mags, mags.size - k)[mags.size - k :] if k else mags[:0]
        idx = torch.from_numpy(np.sort(picked).astype(np.int64))
        gaps = np.diff(idx.numpy(), prepend=0)
        top = int(gaps.max()) if k else 0
        width = next(w for w in WIDTHS if top < 1 << (8 * w))
        return idx, {"k": k, "width": width}, gaps.astype(f"<u{width}").tobytes()

    def check(self, header: object, n: int) -> int:
        h = fields(header, {"k", "width"}, self.spec())
        equal(h, "k", self.count(n), self.spec())
        width = integer(h, "width", 1, 4, self.spec())
        if width not in WIDTHS:
            raise WireError(f"{self.spec()}: index width {width}, expected one of {WIDTHS}")
        return int(h["k"]) * width

    def indices(self, header: dict[str, Any], data: bytes, n: int) -> torch.Tensor:
        gaps = np.frombuffer(data, dtype=f"<u{header['width']}").astype(np.int64)
        if gaps[1:].size and not gaps[1:].all():
            raise WireError(f"{self.spec()}: repeated index (a zero gap)")
        idx = np.cumsum(gaps)
        if idx.size and idx[-1] >= n:
            raise WireError(f"{self.spec()}: index {int(idx[-1])} out of range for {n} values")
        return torch.from_numpy(idx)
