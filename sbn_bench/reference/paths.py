"""Enumeration of the joint paths of an SBN and their log-probabilities, for exact expectations over
every sampled path (the runner's exact mode, the conformance kit's unbiasedness check, the naive
oracle of the reference).

A *path* is one joint state ``(x¹, …, x^L)`` of the stochastic layers; there are ``2^{Σ n_k}`` of
them per data point. Path ``i`` is ``i`` written in binary over the ``Σ n_k`` units, layer 1's units
the most significant bits (as :func:`sbn_bench.model.all_states`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbn_bench import model, network
from sbn_bench.errors import ArgumentError, short_repr
from sbn_bench.problems import Problem

MAX_PATHS = 2**16
"""Default largest number of joint paths per data point that exact enumeration takes on (the
runner's ``max_paths``, the naive oracle's limit)."""


def num_paths(widths: Sequence[int]) -> int:
    """Joint paths per data point, ``2^{Σ n_k}``, for ``widths = (n0, n_1, …, n_L, n_out)``."""
    return 2 ** sum(widths[1:-1])


def enumerate_paths(widths: Sequence[int], dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> list[Tensor]:
    """All joint paths as per-layer states: a list over layers of ``[P, n_k]`` tensors,
    ``P = 2^{Σ n_k}``, for ``widths = (n0, n_1, …, n_L, n_out)``."""
    hidden = list(widths[1:-1])
    joint = model.all_states(sum(hidden), dtype, device)
    return list(torch.split(joint, hidden, dim=1))


def path_log_probs(problem: Problem, paths: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``log p(path | x_d)`` split as ``first[d, i1(path)] + rest[path]`` (float64).

    Layer 1 depends on the data point, later layers only on the path: ``first [D, 2^{n_1}]``
    holds ``log p(x¹ | x_d)`` for every layer-1 state (index = the state read as a binary number,
    unit 0 the most significant bit) and ``rest [P]`` the sum over layers ``k ≥ 2``. The path
    index's top ``n_1`` bits are its layer-1 state: :func:`first_layer_index`.

    Returns:
        ``(first [D, 2^{n_1}], rest [P])``.

    Raises:
        ArgumentError: ``paths`` not one ``[P, n_k]`` tensor per stochastic layer
            (:func:`enumerate_paths`).
    """
    widths = [layer.n_out for layer in problem.net.stochastic]
    if isinstance(paths, Tensor) or not isinstance(paths, Sequence) or len(paths) != len(widths) \
            or not all(isinstance(t, Tensor) and t.dim() == 2 and t.shape[1] == n
                       and t.shape[0] == paths[0].shape[0] and t.dtype == torch.float64
                       and bool(((t == 0) | (t == 1)).all()) for t, n in zip(paths, widths)):
        raise ArgumentError(f"argument paths must be one float64 [P, n_k] tensor of 0s and 1s per "
                            f"stochastic layer (widths {widths}, as enumerate_paths gives), got "
                            f"{short_repr(paths, 60)}", argument="paths",
                            expected=f"{len(widths)} tensors [P, n_k]")
    params = {k: v.to(torch.float64) for k, v in problem.params.items()}
    noise, net = problem.noise_dist, problem.net
    n1 = net.stochastic[0].n_out
    states1 = model.all_states(n1, torch.float64, paths[0].device)
    h = network.stochastic_input(net, params, problem.x.to(torch.float64))  # the body, per point
    a1 = network.preactivation(net, params, 1, h)  # [D, n_1]
    first = model.state_log_prob(noise, a1.unsqueeze(1), states1.unsqueeze(0))  # [D, 2^{n_1}]
    rest = torch.zeros(paths[0].shape[0], dtype=torch.float64, device=paths[0].device)
    for k in range(2, len(paths) + 1):
        a = network.preactivation(net, params, k, paths[k - 2])  # [P, n_k]
        rest = rest + model.state_log_prob(noise, a, paths[k - 1])
    return first, rest


def first_layer_index(widths: Sequence[int], num: int, device: torch.device | str = "cpu") -> Tensor:
    """For paths ``0 … num−1``, the index of their layer-1 state: ``[num]`` (``i >> (Σ n_k − n_1)``)."""
    total, n1 = sum(widths[1:-1]), widths[1]
    return torch.arange(num, device=device) >> (total - n1)

