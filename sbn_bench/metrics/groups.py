"""Parameter groups: each stochastic layer's ``W`` and ``b`` together (``"1" … "L"``), the output
layer (``"out"``) and the whole network (``"all"``), as slices of a flat gradient vector; and the
one ordering of group names used by tables, reports and claims (:func:`layer_key`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from sbn_bench import model

ALL = "all"
OUT = "out"


def layer_key(layer: str) -> tuple[int, int, str]:
    """Sort key of group names: stochastic layers ``1 … L`` in order, then ``out``, then ``all``,
    then anything else by name."""
    layer = str(layer)
    if layer.isdigit():
        return (0, int(layer), "")
    return ({OUT: 1, ALL: 2}.get(layer, 3), 0, layer)


def sort_layers(layers: Iterable[str]) -> list[str]:
    """Distinct group names in :func:`layer_key` order."""
    return sorted({str(x) for x in layers}, key=layer_key)


def hidden_layers(layers: Iterable[str]) -> list[str]:
    """The stochastic layers (``"1" … "L"``) among ``layers``, in order."""
    return [x for x in sort_layers(layers) if x.isdigit()]


@dataclass(frozen=True)
class Groups:
    """Parameter groups over a flat gradient vector.

    Attributes:
        names: ``("1", …, "L", "out", "all")``.
        params: parameter names in flat order (``weight_1, bias_1, …, weight_out, bias_out``).
        shapes: their shapes.
        slices: for each group, its contiguous slice of the flat vector.
        dim: ``P``, the number of parameters.
    """

    names: tuple[str, ...]
    params: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    slices: tuple[slice, ...]
    dim: int

    @classmethod
    def of(cls, params: Mapping[str, Tensor]) -> Groups:
        L = model.n_layers(params)
        names = model.param_names(L)
        shapes = tuple(tuple(params[n].shape) for n in names)
        sizes = [math.prod(s) for s in shapes]
        slices, start = [], 0
        for i in range(0, len(names), 2):  # weight_k, bias_k pairs
            n = sizes[i] + sizes[i + 1]
            slices.append(slice(start, start + n))
            start += n
        groups = [*map(str, range(1, L + 1)), OUT, ALL]
        return cls(tuple(groups), tuple(names), shapes, (*slices, slice(0, start)), start)

    def flatten(self, grads: Mapping[str, Tensor]) -> Tensor:
        """``{name: [S, *shape]} → [S, P]`` float64 in flat order."""
        return torch.cat([grads[n].reshape(grads[n].shape[0], -1).to(torch.float64)
                          for n in self.params], dim=1)

    def flatten_one(self, grad: Mapping[str, Tensor]) -> Tensor:
        """``{name: shape} → [P]`` float64 (e.g. the exact gradient)."""
        return torch.cat([grad[n].reshape(-1).to(torch.float64) for n in self.params])

    def sums(self, v: Tensor) -> Tensor:
        """Per-group sums over the last dimension: ``[..., P] → [..., G]``."""
        return torch.stack([v[..., s].sum(-1) for s in self.slices], dim=-1)


    def param_of(self, column: int) -> str:
        """The parameter that column ``column`` of the flat vector belongs to."""
        start = 0
        for name, shape in zip(self.params, self.shapes):
            start += math.prod(shape)
            if column < start:
                return name
        raise IndexError(f"column {column} is beyond the {self.dim} parameters")
