"""Parameter groups: each stochastic layer's ``W`` and ``b`` together (``"1" … "L"``), the output
layer (``"out"``), a body's and a deep head's parameters (``"body"``, ``"head"``), the binary VAE's
prior (``"prior"``) and the whole network (``"all"``), as slices of a flat gradient vector; and the
one ordering of group names used by tables, reports and claims (:func:`layer_key`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a tensor is handled: reading tables needs none
    from torch import Tensor

ALL = "all"
OUT = "out"


def layer_key(layer: str) -> tuple[int, int, str]:
    """Sort key of group names: ``body``, stochastic layers ``1 … L`` in order, ``head``, ``out``,
    ``prior``, then ``all``, then anything else by name."""
    layer = str(layer)
    if layer.isdigit():
        return (0, int(layer), "")
    if layer == "body":
        return (0, 0, "")
    return ({"head": (1, 0), OUT: (1, 1), "prior": (1, 2), ALL: (2, 0)}.get(layer, (3, 0)) + (layer,))


def sort_layers(layers: Iterable[str]) -> list[str]:
    """Distinct group names in :func:`layer_key` order."""
    return sorted({str(x) for x in layers}, key=layer_key)


def hidden_layers(layers: Iterable[str]) -> list[str]:
    """The stochastic layers (``"1" … "L"``) among ``layers``, in order."""
    return [x for x in sort_layers(layers) if x.isdigit()]


BODY, HEAD, PRIOR = "body", "head", "prior"


def group_of(param: str) -> str:
    """The group of a parameter name: ``weight_3 → "3"``, ``weight_out → "out"``,
    ``body_weight_1 → "body"``, ``head_bias_2 → "head"``, ``prior_logits → "prior"``."""
    if param.startswith("body_"):
        return BODY
    if param.startswith("head_"):
        return HEAD
    if param == "prior_logits":
        return PRIOR
    return param.rsplit("_", 1)[1]


def param_order(params: Iterable[str]) -> list[str]:
    """Parameter names in network order: the body's, the stochastic layers' (``weight_k, bias_k``),
    the head's, the output layer's, the prior's (the order of :attr:`Problem.param_names`)."""
    def key(name: str) -> tuple[int, int, int]:
        kind = 0 if "weight" in name else 1
        g = group_of(name)
        index = int(name.rsplit("_", 1)[1]) if g in (BODY, HEAD) or g.isdigit() else 0
        rank = {BODY: 0, HEAD: 2, OUT: 3, PRIOR: 4}.get(g, 1)
        return (rank, index, kind)
    return sorted(params, key=key)


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
        """The groups of a problem's parameters: ``body`` (every body parameter, when there is a
        body), each stochastic layer ``1 … L``, ``head`` (the head's hidden layers, when it has
        some), ``out``, ``prior`` (the binary VAE's prior logits) and ``all``; in the flat order
        :func:`param_order` gives (network order)."""
        names = param_order(params)
        shapes = tuple(tuple(params[n].shape) for n in names)
        sizes = dict(zip(names, (math.prod(s) for s in shapes)))
        groups: list[str] = []
        slices: list[slice] = []
        start = 0
        for n in names:
            g = group_of(n)
            if not groups or groups[-1] != g:
                groups.append(g)
                slices.append(slice(start, start))
            start += sizes[n]
            slices[-1] = slice(slices[-1].start, start)
        return cls((*groups, ALL), tuple(names), shapes, (*slices, slice(0, start)), start)

    def flatten(self, grads: Mapping[str, Tensor]) -> Tensor:
        """``{name: [S, *shape]} → [S, P]`` float64 in flat order."""
        import torch

        return torch.cat([grads[n].reshape(grads[n].shape[0], -1).to(torch.float64)
                          for n in self.params], dim=1)

    def flatten_one(self, grad: Mapping[str, Tensor]) -> Tensor:
        """``{name: shape} → [P]`` float64 (e.g. the exact gradient)."""
        import torch

        return torch.cat([grad[n].reshape(-1).to(torch.float64) for n in self.params])

    def sums(self, v: Tensor) -> Tensor:
        """Per-group sums over the last dimension: ``[..., P] → [..., G]``."""
        import torch

        return torch.stack([v[..., s].sum(-1) for s in self.slices], dim=-1)


    def param_of(self, column: int) -> str:
        """The parameter that column ``column`` of the flat vector belongs to."""
        start = 0
        for name, shape in zip(self.params, self.shapes):
            start += math.prod(shape)
            if column < start:
                return name
        raise IndexError(f"column {column} is beyond the {self.dim} parameters")
