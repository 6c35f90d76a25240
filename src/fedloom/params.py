"""A model's federated state as one flat buffer plus a spec.

Federated state is every floating-point tensor of ``model.state_dict()`` (parameters and float
buffers such as BatchNorm running statistics), minus the names a task keeps personal. Integer
buffers (``num_batches_tracked``) stay local.

``flatten_module`` re-points those tensors at views of one contiguous buffer, as apex's flat
parameters do. After that, "load the global model" is one ``copy_`` and "add this client's
update to the aggregate" is one ``add_``: no state_dict, no per-tensor Python loop, no copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import WireError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ParamSpec:
    """Ordered names, shapes and dtypes of a model's federated tensors, and their flat layout."""

    def __init__(self, entries: Iterable[TensorSpec]):
        self.entries: tuple[TensorSpec, ...] = tuple(entries)
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in spec")
        dtypes = {e.dtype for e in self.entries}
        if len(dtypes) > 1:
            raise ValueError(
                f"federated tensors must share one dtype for the flat buffer, got "
                f"{sorted(str(d) for d in dtypes)}; cast the model (e.g. model.float())"
            )
        self.dtype: torch.dtype = dtypes.pop() if dtypes else torch.float32
        self.offsets: tuple[int, ...] = tuple(_cumsum(e.numel for e in self.entries))
        self.numel: int = self.offsets[-1] if self.offsets else 0
        self._by_name = {e.name: i for i, e in enumerate(self.entries)}

    @classmethod
    def from_module(cls, model: nn.Module, exclude: Iterable[str] = ()) -> ParamSpec:
        """Spec of ``model``'s floating-point state, skipping names under any ``exclude`` prefix."""
        prefixes = tuple(exclude)
        return cls(
            TensorSpec(name, tuple(t.shape), t.dtype)
            for name, t in model.state_dict(keep_vars=True).items()
            if t.is_floating_point() and not _excluded(name, prefixes)
        )

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)

    def slice(self, name: str) -> slice:
        i = self._by_name[name]
        start = self.offsets[i - 1] if i else 0
        return slice(start, self.offsets[i])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view of ``flat`` (no copy)."""
        out, start = {}, 0
        for e, end in zip(self.entries, self.offsets):
            out[e.name] = flat[start:end].view(e.shape)
            start = end
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``tensors`` (checked against the spec) into a new flat buffer."""
        self.check(tensors)
        if not self.entries:
            return torch.empty(0, dtype=self.dtype)
        return torch.cat([tensors[e.name].reshape(-1) for e in self.entries])

    def name_problems(self, names: Iterable[str]) -> list[str]:
        """Descriptions of the unknown and missing names among ``names`` (empty if none)."""
        given = set(names)
        unknown = sorted(given - set(self._by_name))
        missing = [n for n in self.names if n not in given]
        return [
            f"{what} tensors {which}"
            for what, which in (("unknown", unknown), ("missing", missing))
            if which
        ]

    def check(self, tensors: Mapping[str, torch.Tensor], where: str = "update") -> None:
        """Raise :class:`WireError` naming every unknown, missing or mis-shaped tensor."""
        problems = self.name_problems(tensors)
        for e in self.entries:
            t = tensors.get(e.name)
            if t is None:
                continue
            if tuple(t.shape) != e.shape:
                problems.append(f"{e.name}: shape {tuple(t.shape)}, expected {e.shape}")
            if t.dtype != e.dtype:
                problems.append(f"{e.name}: dtype {t.dtype}, expected {e.dtype}")
        if problems:
            raise WireError(f"{where} does not match the model spec: " + "; ".join(problems))

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"name": e.name, "shape": list(e.shape), "dtype": DTYPE_NAMES[e.dtype]}
            for e in self.entries
        ]

    @classmethod
    def from_json(cls, items: list[dict[str, Any]]) -> ParamSpec:
        return cls(TensorSpec(d["name"], tuple(d["shape"]), DTYPES[d["dtype"]]) for d in items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSpec) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"ParamSpec({len(self.entries)} tensors, {self.numel} values, {self.dtype})"


def flatten_module(model: nn.Module, exclude: Iterable[str] = ()) -> tuple[ParamSpec, torch.Tensor]:
    """Make ``model``'s federated tensors views of one new flat buffer and return (spec, flat).

    Call it before building the optimizer. The values are preserved; parameters stay the same
    ``nn.Parameter`` objects (only their storage moves), so hooks and names keep working.
    """
    spec = ParamSpec.from_module(model, exclude)
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    flat = torch.empty(spec.numel, dtype=spec.dtype, device=device)
    views = spec.unflatten(flat)
    for name, view in views.items():
        owner, attr = _owner(model, name)
        if attr in owner._parameters:
            param = owner._parameters[attr]
            assert param is not None  # ParamSpec.from_module lists only tensors that exist
            view.copy_(param.detach())
            param.data = view
        else:
            buffer = owner._buffers[attr]
            assert buffer is not None  # as above: only tensors that exist are in the spec
            view.copy_(buffer)
            owner._buffers[attr] = view
    return spec, flat


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _excluded(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p.rstrip(".") + ".") for p in prefixes)


def _cumsum(values: Iterable[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
