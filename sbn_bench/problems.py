"""Problems: an SBN's parameters plus data, loss and noise; constructors and the public ``.npz`` format.

The problem file format is a public contract (README, "Problem files"). Version 1:

* ``x``: float ``[D, n0]``; ``y``: ``[D]`` (or ``[D, n_out]`` for ``mse``, ``bernoulli``, ``vae``);
* ``weight_1 … weight_L`` (``[n_k, n_{k-1}]``), ``bias_1 … bias_L`` (``[n_k]`` or ``[1, n_k]``);
* ``weight_out`` (``[n_out, n_L]``), ``bias_out`` (``[n_out]`` or ``[1, n_out]``);
* optional 0-d string arrays ``loss`` (default ``logistic``) and ``noise`` (default ``logistic``).

``L`` is read from the ``weight_k`` names. Version 2 (written by this version) adds 0-d string
arrays ``format`` (``"2"``) and ``network`` (the JSON of :meth:`sbn_bench.network.Network.describe`:
the kinds, shapes, strides, paddings and activations of the body, stochastic and head layers), the
body and head parameters (``body_weight_i``, ``head_weight_i``, …, see :mod:`sbn_bench.network`),
conv weights ``[C_out, C_in, k, k]``, ``prior_logits`` and ``kl`` (``"analytic"`` or ``"sampled"``)
for the binary VAE. Version 1 files load unchanged (a plain network is read from the names).
Everything is validated on load and refused with an error naming the file and the array.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.errors import SbnBenchError, check_path, check_seed, check_whole, is_integer, short_repr
from sbn_bench.fileio import WriteError, atomic_write_bytes
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES, Noise, Params
from sbn_bench.network import Network, NetworkError, from_description, from_layers, parse_network

DEFAULT_DATA_POINTS = 100
MAX_PROBLEM_BYTES = 2**33
"""Largest random problem (parameters and data, float64): 8 GiB; larger requests are refused
before allocating, with the size, rather than failing in the allocator."""


class ProblemError(SbnBenchError, ValueError):
    """A problem (file, architecture or arrays) that cannot be used, with the reason."""


@dataclass(frozen=True, eq=False)
class Problem:
    """An SBN with its data: everything needed to define ``J(θ)`` of SPEC §1.

    Attributes:
        params: parameters by public name (``weight_1``, ``bias_1``, …, ``weight_out``,
            ``bias_out``); weights ``[out, in]``, biases 1-D. The constructors and the file loader
            give float64; :meth:`to` makes float32 copies for estimators, and the reference
            always computes in float64 (pass float64 values for exact work).
        x: ``[D, n0]`` float64 inputs.
        y: ``[D]`` labels (±1 float64 for ``logistic``, int64 classes for ``softmax``) or float64
            ``[D]``/``[D, n_out]`` targets for ``mse``.
        loss: ``"logistic"``, ``"softmax"``, ``"mse"``, ``"bernoulli"`` (multi-output, targets
            in {0,1}) or ``"vae"`` (the binary VAE's negative ELBO: ``bernoulli`` reconstruction of
            the targets plus the KL of SPEC §7).
        noise: ``"logistic"`` or ``"gaussian"``.
        name: a label for tables and reports.
        network: the layers (:class:`sbn_bench.network.Network`); None: the paper's kind of
            network, read from the parameter names (set on construction).
        kl: for ``vae``: ``"analytic"`` (the KL and its gradient exact, added to every estimate)
            or ``"sampled"`` (``log q(z|x) − log p(z)`` at the sampled ``z`` is part of the loss
            each estimator estimates, as in the DisARM/ARMS papers' variant).
    """

    params: dict[str, Tensor]
    x: Tensor
    y: Tensor
    loss: str = "logistic"
    noise: str = "logistic"
    name: str = "problem"
    meta: dict[str, str] = field(default_factory=dict)
    network: Network | None = None
    kl: str = "analytic"

    def __post_init__(self) -> None:
        validate(self)

    def __repr__(self) -> str:
        """One line: name, network, data, loss, noise, dtype and device (the tensors' values, a
        few hundred lines, are left out: :meth:`fingerprint` identifies them)."""
        kl = f", kl={self.kl!r}" if self.loss == "vae" else ""
        return (f"Problem(name={self.name!r}, arch={self.arch!r}, num_data={self.num_data}, "
                f"loss={self.loss!r}, noise={self.noise!r}{kl}, dtype={self.x.dtype}, "
                f"device={self.x.device})")

    @property
    def net(self) -> Network:
        """The network (always set after construction)."""
        assert self.network is not None
        return self.network

    @property
    def n_layers(self) -> int:
        """Number of stochastic layers ``L``."""
        return self.net.n_layers

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The kind of each stochastic layer (``"dense"`` or ``"conv2d"``), then ``"body"`` and
        ``"head"`` when the network has a body or a head deeper than one linear layer (the
        estimators' ``layers`` flag names what they support)."""
        return (*self.net.layer_kinds, *sorted(self.net.parts))

    @property
    def widths(self) -> tuple[int, ...]:
        """``(n0, n_1, …, n_L, n_out)``, every layer's units flattened (``C·H·W``)."""
        return self.net.widths

    @property
    def arch(self) -> str:
        """The architecture in the compact grammar, e.g. ``"2-5-5-5-1"``."""
        return self.net.arch()

    @property
    def num_data(self) -> int:
        return self.x.shape[0]

    @property
    def noise_dist(self) -> Noise:
        return model.get_noise(self.noise)

    @property
    def param_names(self) -> list[str]:
        """Parameter names in network order (body, stochastic layers, head, output, prior)."""
        return list(self.net.param_shapes())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> Problem:
        """A copy on ``device`` with floating tensors cast to ``dtype`` (labels keep integer type).

        Raises:
            ProblemError: ``dtype`` not a floating torch dtype, or ``device`` not a device.
        """
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                               torch.float64):
            raise ProblemError(f"argument dtype={dtype!r} must be a floating torch dtype such as "
                               "torch.float32 or torch.float64", argument="dtype", value=dtype,
                               expected="torch.float32 or torch.float64")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ProblemError(f"argument device={device!r} is not a torch device ({e})".split(
                    "\n")[0][:200], argument="device", value=device,
                    expected="a torch device such as 'cpu' or 'cuda'") from None
            if device.type == "meta":
                raise ProblemError("argument device='meta' holds no data; expected 'cpu' or 'cuda'",
                                   argument="device", value="meta", expected="'cpu' or 'cuda'")

        def cast(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        try:
            return replace(self, params={k: cast(v) for k, v in self.params.items()},
                           x=cast(self.x), y=cast(self.y))
        except (AssertionError, RuntimeError) as e:  # e.g. 'cuda' on a torch built without CUDA
            text = " ".join(str(e).split())[:200]
            raise ProblemError(f"argument device={str(device)!r} cannot hold the problem here "
                               f"({text})", argument="device", value=str(device),
                               expected="an available device, e.g. 'cpu'") from None

    def copy(self) -> Problem:
        """A copy with its own tensors (a cell's private problem: nothing it does to it reaches
        another cell)."""
        return replace(self, params={k: v.detach().clone() for k, v in self.params.items()},
                       x=self.x.clone(), y=self.y.clone(), meta=dict(self.meta))

    def with_params(self, params: Params, name: str | None = None) -> Problem:
        """A copy with new (detached) parameters, e.g. a training checkpoint (checked by
        :func:`check_params`)."""
        check_params(self, params)
        return replace(self, params={k: v.detach().clone() for k, v in params.items()},
                       name=self.name if name is None else name)

    def with_rows(self, x: Tensor, y: Tensor, params: Params | None = None) -> Problem:
        """The problem on other rows ``x [D', n0]``, ``y [D', …]`` of its own data (a minibatch, the
        data repeated for several draws), with ``params`` if given, **without re-validation**:
        ``__init__`` checks every array (0.1 ms on the paper net, 6 ms on the digits), too slow
        for a training step or an estimator's call, and rows of a validated problem are valid. The
        caller guarantees that ``x`` and ``y`` are such rows; the tensors are used as they are."""
        sub = copy.copy(self)
        object.__setattr__(sub, "x", x)
        object.__setattr__(sub, "y", y)
        if params is not None:
            object.__setattr__(sub, "params", params)
        return sub

    def loss_values(self, eta: Tensor) -> Tensor:
        """``ℓ(η, y)`` per data point: ``eta [..., D, n_out] → [..., D]``."""
        return model.loss_fn(self.loss, eta, self.y)

    def fingerprint(self) -> str:
        """SHA-256 over the problem's arrays (name, dtype, shape, bytes, in name order), loss and
        noise: equal fingerprints mean the same ``J(θ)``. The one problem identity of the package
        (run manifests, training manifests and caches)."""
        h = hashlib.sha256()
        arrays = {"x": self.x, "y": self.y, **self.params}
        for k in sorted(arrays):
            a = np.ascontiguousarray(arrays[k].detach().cpu().contiguous().numpy())
            h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        h.update(f"loss={self.loss}|noise={self.noise}".encode())
        if not self.net.is_plain:  # a plain network is determined by its arrays (as in version 1)
            h.update(b"|network=" + json.dumps(self.net.describe(), sort_keys=True).encode())
        if self.loss == "vae":
            h.update(f"|kl={self.kl}".encode())
        return h.hexdigest()


# --------------------------------------------------------------------------------------------
# validation


def _fail(source: str, array: str | None, msg: str) -> ProblemError:
    where = f"problem {source}" + (f": array {array!r}" if array else "")
    return ProblemError(f"{where} {msg}", argument=array or source)


def _normalise_labels(loss: str, y: Tensor, n_out: int, source: str) -> Tensor:
    """Check that labels fit the loss and convert them to the stored form (see :class:`Problem`)."""
    if loss == "logistic":
        vals = set(torch.unique(y).tolist()) if y.numel() else set()
        if y.dim() != 1:
            raise _fail(source, "y", f"has shape {tuple(y.shape)}, expected [D] for loss 'logistic'")
        if vals <= {-1.0, 1.0}:
            return y.to(torch.float64)
        if vals <= {0.0, 1.0}:
            return (2 * y - 1).to(torch.float64)
        raise _fail(source, "y", f"has values {sorted(vals)[:6]}, expected labels ±1 (or 0/1) "
                                 "for loss 'logistic'")
    if loss == "softmax":
        if y.dim() != 1:
            raise _fail(source, "y", f"has shape {tuple(y.shape)}, expected [D] class indices for "
                                     "loss 'softmax'")
        yr = torch.round(y.to(torch.float64))
        if y.numel() and (not torch.equal(yr, y.to(torch.float64)) or yr.min() < 0
                          or yr.max() >= n_out):
            raise _fail(source, "y", f"must hold integer classes in [0, {n_out}) for loss "
                                     f"'softmax' with n_out={n_out}")
        return yr.to(torch.int64)
    if loss in ("bernoulli", "vae"):
        if not (y.dim() == 2 and y.shape[1] == n_out):
            raise _fail(source, "y", f"has shape {tuple(y.shape)}, expected [D, {n_out}] binary "
                                     f"targets for loss {loss!r}")
        vals = set(torch.unique(y).tolist()) if y.numel() else set()
        if not vals <= {0.0, 1.0}:
            raise _fail(source, "y", f"has values {sorted(vals)[:6]}, expected targets in {{0, 1}} "
                                     f"for loss {loss!r}")
        return y.to(torch.float64)
    # mse
    if not (y.dim() == 2 and y.shape[1] == n_out) and not (y.dim() == 1 and n_out == 1):
        raise _fail(source, "y", f"has shape {tuple(y.shape)}, expected [D, {n_out}] targets for "
                                 "loss 'mse'")
    return y.to(torch.float64)


KL_MODES = ("analytic", "sampled")
"""How the binary VAE's KL term is handled (:attr:`Problem.kl`)."""


def _plain_network(p: Problem, src: str) -> Network:
    """The paper's kind of network read from the parameter names (version 1 problems)."""
    L = model.n_layers(p.params)
    if L < 1:
        raise _fail(src, "weight_1", "is missing: a network needs at least one stochastic layer")
    expected = set(model.param_names(L))
    for name in model.param_names(L):
        if name not in p.params:
            raise _fail(src, name, "is missing")
    for name in p.params:
        if name not in expected:
            raise _fail(src, name, f"is unexpected (the network has {L} stochastic layers; "
                                   "expected weight_1..weight_L, bias_1..bias_L, weight_out, "
                                   "bias_out)")
    prev = p.x.shape[1]
    widths = [prev]
    for k in [*range(1, L + 1), "out"]:
        w, b = p.params[f"weight_{k}"], p.params[f"bias_{k}"]
        if w.dim() != 2 or w.shape[1] != prev or w.shape[0] < 1:
            raise _fail(src, f"weight_{k}", f"has shape {tuple(w.shape)}, expected "
                                            f"[n_{k}, {prev}] (n_{k} ≥ 1)")
        if tuple(b.shape) != (w.shape[0],):
            raise _fail(src, f"bias_{k}", f"has shape {tuple(b.shape)}, expected [{w.shape[0]}]")
        prev = w.shape[0]
        widths.append(prev)
    return Network.plain(widths)


def _check_network_params(p: Problem, net: Network, src: str) -> None:
    n0 = math.prod(net.input_shape)
    if p.x.shape[1] != n0:
        raise _fail(src, "x", f"has {p.x.shape[1]} columns, expected {n0} (the network's input "
                              f"{'x'.join(map(str, net.input_shape))}, flattened)")
    shapes = net.param_shapes()
    for name, shape in shapes.items():
        if name not in p.params:
            raise _fail(src, name, f"is missing (the network needs it, shape {list(shape)})")
        if tuple(p.params[name].shape) != shape:
            raise _fail(src, name, f"has shape {tuple(p.params[name].shape)}, expected "
                                   f"{list(shape)} for arch {net.arch()}")
    for name in p.params:
        if name not in shapes:
            raise _fail(src, name, f"is unexpected (arch {net.arch()} has the parameters "
                                   f"{', '.join(shapes)})")


def check_problem(value: object, argument: str = "problem") -> Problem:
    """``value`` if it is a :class:`Problem`, else a :class:`ProblemError` naming ``argument`` (rather
    than an ``AttributeError`` from deep inside the function that was given it)."""
    if isinstance(value, Problem):
        return value
    raise ProblemError(f"argument {argument}={short_repr(value, 60)} is a {type(value).__name__}, "
                       "expected a Problem (random_problem, preset_problem, load_problem)", argument=argument,
                       value=value, expected="a sbn_bench.problems.Problem")


def validate(p: Problem, source: str | None = None) -> None:
    """Check a problem's arrays, shapes, finiteness, loss, noise and labels.

    Labels are normalised in place of the frozen dataclass (±1 for logistic, int64 for softmax),
    and a problem built without a network gets the plain one its parameter names describe.

    Raises:
        ProblemError: naming the problem, the array and what was expected.
    """
    src = repr(source or p.meta.get("source") or p.name)
    for name, v in (("x", p.x), ("y", p.y), *(p.params.items() if isinstance(p.params, Mapping) else ())):
        if not isinstance(v, Tensor):
            raise _fail(src, name, f"is a {type(v).__name__}, expected a torch.Tensor (torch.as_tensor "
                                   "converts an array)")
    if not isinstance(p.params, Mapping):
        raise _fail(src, "params", f"is a {type(p.params).__name__}, expected a dict of tensors")
    if p.loss not in LOSS_NAMES:
        raise _fail(src, "loss", f"is {p.loss!r}, expected one of {', '.join(LOSS_NAMES)}")
    if p.noise not in NOISE_NAMES:
        raise _fail(src, "noise", f"is {p.noise!r}, expected one of {', '.join(NOISE_NAMES)}")
    if p.kl not in KL_MODES:
        raise _fail(src, "kl", f"is {p.kl!r}, expected one of {', '.join(KL_MODES)}")
    if p.kl != "analytic" and p.loss != "vae":  # only a VAE has a KL term: a value would be dropped
        raise _fail(src, "kl", f"is {p.kl!r} for loss {p.loss!r}; kl applies to loss 'vae' only")
    if p.x.dim() != 2 or p.x.shape[0] < 1 or p.x.shape[1] < 1:
        raise _fail(src, "x", f"has shape {tuple(p.x.shape)}, expected [D, n0] with D, n0 ≥ 1")
    if p.network is None:
        object.__setattr__(p, "network", _plain_network(p, src))
    else:
        if not isinstance(p.network, Network):
            raise _fail(src, "network", f"is {type(p.network).__name__}, expected a "
                                        "sbn_bench.network.Network")
        _check_network_params(p, p.network, src)
    net = p.net
    for name, t in [("x", p.x), ("y", p.y), *p.params.items()]:
        if not torch.isfinite(t.to(torch.float64)).all():
            raise _fail(src, name, "contains NaN or Inf")
    if p.y.shape[0] != p.x.shape[0]:
        raise _fail(src, "y", f"has {p.y.shape[0]} rows but x has {p.x.shape[0]} data points")
    n_out = net.widths[-1]
    if p.loss == "logistic" and n_out != 1:
        raise _fail(src, "weight_out", f"has {n_out} outputs, expected 1 for loss 'logistic'")
    if p.loss == "softmax" and n_out < 2:
        raise _fail(src, "weight_out", f"has {n_out} output, expected at least 2 (one per class) for "
                                       "loss 'softmax': with one class the loss is 0 for every θ")
    if p.loss == "vae":
        if net.n_layers != 1 or not net.prior:
            raise _fail(src, "network", "a binary VAE ('vae' loss) has one stochastic layer (the "
                                        "latents) and prior_logits (arch with prior=True)")
    elif net.prior:
        raise _fail(src, "prior_logits", f"is only used by loss 'vae', not {p.loss!r}")
    object.__setattr__(p, "y", _normalise_labels(p.loss, p.y, n_out, src))
    if p.loss == "vae" and not (p.y.shape == p.x.shape and torch.equal(p.y.to(p.x), p.x)):
        raise _fail(src, "y", "differs from x; a binary VAE ('vae' loss) reconstructs its input, so "
                              "its targets y are its inputs x")


# --------------------------------------------------------------------------------------------
# constructors


def check_params(problem: Problem, params: object, argument: str = "params") -> None:
    """Refuse ``params`` that are not this problem's: a mapping with exactly its parameter names,
    each a floating-point :class:`torch.Tensor` of its shape.

    Raises:
        ProblemError: naming ``argument``, the parameter and what was expected.
    """
    if not isinstance(params, Mapping):
        raise ProblemError(f"argument {argument}={short_repr(params, 60)} is a "
                           f"{type(params).__name__}; expected a dict of tensors named "
                           f"{', '.join(problem.param_names)}", argument=argument, value=params,
                           expected="a dict of tensors")
    names = set(problem.param_names)
    missing, extra = sorted(names - set(params)), sorted(set(params) - names, key=str)
    if missing or extra:
        raise ProblemError(f"argument {argument} has " + "; ".join(
            ([f"no {', '.join(map(repr, missing))}"] if missing else [])
            + ([f"unknown {', '.join(map(repr, extra))}"] if extra else []))
            + f" (problem {problem.name!r} has {', '.join(problem.param_names)})",
            argument=argument, expected=", ".join(problem.param_names))
    for k in problem.param_names:
        v, want = params[k], tuple(problem.params[k].shape)
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ProblemError(f"argument {argument}[{k!r}] is a {type(v).__name__}"
                               + (f" of {v.dtype}" if isinstance(v, torch.Tensor) else "")
                               + f"; expected a floating-point torch.Tensor of shape {want}",
                               argument=argument, expected="floating-point tensors")
        if tuple(v.shape) != want:
            raise ProblemError(f"argument {argument}[{k!r}] has shape {tuple(v.shape)}; problem "
                               f"{problem.name!r} needs {want}", argument=argument,
                               expected=f"shape {want}")
        if v.device != problem.x.device:
            raise ProblemError(f"argument {argument}[{k!r}] is on {v.device}; problem "
                               f"{problem.name!r} is on {problem.x.device}", argument=argument,
                               expected=f"tensors on {problem.x.device}")


def _is_plain_arch(arch: str | Sequence[int]) -> bool:
    return not isinstance(arch, str) or bool(re.fullmatch(r"\s*\d+(-\d+)*\s*", arch))


def parse_arch(arch: str | Sequence[int]) -> tuple[int, ...]:
    """Parse ``"2-5-5-5-1"`` into ``(2, 5, 5, 5, 1)``: input, ≥ 1 stochastic layers, output; an
    architecture in the full grammar (:func:`sbn_bench.network.parse_network`, e.g.
    ``1x8x8-c8k3-10``) gives its flattened widths ``(n0, n_1, …, n_L, n_out)``."""
    if isinstance(arch, str) and not _is_plain_arch(arch):
        return network_of(arch).widths
    if isinstance(arch, str):
        parts = arch.strip().split("-")
        if not all(re.fullmatch(r"\d+", q) for q in parts):
            raise ProblemError(f"argument arch={arch!r} is not of the form N0-N1-...-NL-NOUT "
                               "(positive integers separated by '-', e.g. 2-5-5-5-1)", argument="arch")
        widths = tuple(int(q) for q in parts)
    else:
        if isinstance(arch, (np.ndarray, torch.Tensor)) and arch.ndim == 1:
            arch = arch.tolist()
        if not isinstance(arch, (list, tuple)) or not all(is_integer(w) for w in arch):
            # (bytes are their character codes, a set has no order, an iterator would be used up)
            raise ProblemError(f"argument arch={short_repr(arch, 60)} must be a string such as "
                               "'2-5-5-5-1' or a sequence of integers", argument="arch", value=arch,
                               expected="a sequence of integers ≥ 1")
        widths = tuple(int(w) for w in arch)
    if len(widths) < 3 or min(widths) < 1:
        raise ProblemError(f"argument arch={arch!r} needs an input width, at least one stochastic "
                           "layer and an output width, all ≥ 1 (e.g. 2-5-5-5-1)", argument="arch")
    return widths


def layer_list_file(arch: object) -> str | None:
    """The path of a JSON layer list file when ``arch`` names one (``net.json``), else None."""
    return arch.strip() if isinstance(arch, str) and arch.strip().lower().endswith(".json") else None


def network_of(arch: str | Sequence[int], loss: str = "logistic") -> Network:
    """The :class:`~sbn_bench.network.Network` of an architecture (plain widths or the full
    grammar); ``loss="vae"`` adds the prior's logits.

    Raises:
        ProblemError: a malformed architecture, naming the token and what was expected.
    """
    if not isinstance(arch, str) and not hasattr(arch, "__iter__"):  # a str, a list, an array
        raise ProblemError(f"argument arch={arch!r} is a {type(arch).__name__}; expected a string such "
                           "as '2-5-5-5-1' or a sequence of widths", argument="arch", value=arch,
                           expected="an architecture string or widths")
    if (path := layer_list_file(arch)) is not None:
        return network_file(path, prior=loss == "vae")
    if loss != "vae" and _is_plain_arch(arch):
        return Network.plain(parse_arch(arch))
    text = arch if isinstance(arch, str) else "-".join(map(str, arch))
    try:
        return parse_network(text, prior=loss == "vae")
    except NetworkError as e:
        raise ProblemError(str(e), argument="arch", value=e.value, expected=e.expected) from None


def _in_file(e: ProblemError) -> ProblemError:
    """``e`` marked as a fault of a file's content, not of the option that named the file: the
    command line exits with status 1, not as a usage error (``usage`` False)."""
    e.usage = False
    return e


class _RepeatedKey(ValueError):
    """A JSON object gives a key twice."""


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict, refusing a key given twice (``json`` keeps the last silently)."""
    twice = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if twice:
        raise _RepeatedKey(f"the key{'s' if len(twice) > 1 else ''} {', '.join(map(repr, twice))} "
                           "given twice in one object; expected each key once")
    return dict(pairs)


def network_file(path: str | os.PathLike[str], *, prior: bool = False) -> Network:
    """The network of a JSON layer list file ``{"input": [C, H, W] or [n], "layers": [...]}``
    (:func:`sbn_bench.network.from_layers`: what the ``--arch`` grammar cannot say, e.g. a
    LeakyReLU slope); ``--arch net.json`` and TOML ``arch = "net.json"`` read it.

    Raises:
        ProblemError: the file is missing, not JSON, or not a valid layer list (naming the file,
            the key or layer, and what was expected).
    """
    where = f"argument arch={str(path)!r}"
    try:
        d = json.loads(Path(path).read_text(), object_pairs_hook=_no_repeated_keys)
    except OSError as e:
        raise _in_file(ProblemError(f"{where}: cannot read the layer list file ({e.strerror or e})",
                           argument="arch", value=str(path), expected="a readable JSON file")) from None
    except _RepeatedKey as e:
        raise _in_file(ProblemError(f"{where}: {e}", argument="arch", value=str(path),
                           expected="each key once")) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise _in_file(ProblemError(f"{where} is not JSON ({e})", argument="arch", value=str(path),
                           expected='{"input": [...], "layers": [...]}')) from None
    if not isinstance(d, dict) or set(d) != {"input", "layers"} \
            or not isinstance(d["input"], list) or not isinstance(d["layers"], list) \
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in d["input"]):
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise _in_file(ProblemError(f"{where}: expected an object with exactly the keys 'input' (a list of "
                           f"integers) and 'layers' (a list of layer tables), got {keys}",
                           argument="arch", value=str(path),
                           expected='{"input": [...], "layers": [...]}'))
    try:
        return from_layers(d["input"], d["layers"], prior=prior, source=f"{path}: layers")
    except NetworkError as e:
        raise _in_file(ProblemError(str(e), argument="arch", value=e.value, expected=e.expected)) from None


def check_arch_loss(arch: str | Sequence[int], loss: str) -> None:
    """Refuse an output width that the loss cannot use: ``logistic`` needs ``n_out = 1``,
    ``softmax`` ``n_out ≥ 2`` (one class gives ``J ≡ 0``); ``mse`` takes any.

    Raises:
        ProblemError: naming the architecture, its ``n_out`` and what the loss expects.
    """
    widths = parse_arch(arch)
    text, n_out = (arch if isinstance(arch, str) else "-".join(map(str, widths))), widths[-1]
    if loss == "logistic" and n_out != 1:
        raise ProblemError(f"argument arch={text!r} gives weight_out n_out={n_out} outputs, expected "
                           "1 for loss 'logistic' (e.g. 2-5-5-5-1); use loss 'softmax' for several "
                           "classes", argument="arch", value=text, expected="n_out = 1")
    if loss == "softmax" and n_out < 2:
        raise ProblemError(f"argument arch={text!r} gives weight_out n_out={n_out} output, expected at "
                           "least 2 (one per class) for loss 'softmax' (e.g. 2-5-5-5-3); use loss "
                           "'logistic' for two classes with one output", argument="arch", value=text,
                           expected="n_out ≥ 2")


def _uniform(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1


def random_params(widths: Sequence[int], gen: torch.Generator) -> dict[str, Tensor]:
    """All weights and biases ``U(−1, 1)``, drawn layer by layer in network order."""
    params: dict[str, Tensor] = {}
    L = len(widths) - 2
    for i, k in enumerate([*range(1, L + 1), "out"]):
        params[f"weight_{k}"] = _uniform(gen, widths[i + 1], widths[i])
        params[f"bias_{k}"] = _uniform(gen, widths[i + 1])
    return params


def random_network_params(net: Network, gen: torch.Generator) -> dict[str, Tensor]:
    """Parameters of a network beyond the plain kind: weights ``U(−1, 1)/√fan_in`` (pre-activations
    of order one whatever the width), biases and prior logits ``U(−1, 1)``, in network order."""
    params: dict[str, Tensor] = {}
    for name, shape in net.param_shapes().items():
        if "weight" in name:
            fan_in = math.prod(shape[1:])
            params[name] = _uniform(gen, *shape) / math.sqrt(fan_in)
        else:
            params[name] = _uniform(gen, *shape)
    return params


def random_problem(
    arch: str | Sequence[int],
    seed: int = 0,
    *,
    data_points: int = DEFAULT_DATA_POINTS,
    loss: str = "logistic",
    noise: str = "logistic",
    kl: str = "analytic",
) -> Problem:
    """A random problem (``--arch 2-5-5-5-1 --seed 0``; any architecture of the grammar of
    :mod:`sbn_bench.network`).

    Plain networks: weights and biases ``U(−1, 1)``; others :func:`random_network_params`. Inputs
    ``x ~ N(0, I)`` ``[D, n0]`` (binary ``{0,1}`` for ``vae``, whose targets are the inputs);
    labels uniform ±1 (``logistic``), uniform classes (``softmax``), ``N(0, 1)`` targets
    ``[D, n_out]`` (``mse``) or uniform ``{0,1}`` targets (``bernoulli``); all from one
    ``torch.Generator`` seeded with ``seed``, in that order.
    """
    model.check_loss_name(loss)
    net = network_of(arch, loss)
    widths = net.widths
    if not is_integer(data_points) or data_points < 1:
        raise ProblemError(f"argument data_points={data_points!r} must be an integer ≥ 1",
                           argument="data_points")
    data_points, seed = int(data_points), check_seed(seed, error=ProblemError)
    model.get_noise(noise)
    check_arch_loss(widths, loss)
    if loss == "vae" and widths[-1] != widths[0]:
        raise ProblemError(f"argument arch={net.arch()!r}: a VAE reconstructs its input, so n_out = "
                           f"{widths[-1]} must equal n0 = {widths[0]}", argument="arch")
    n_params = sum(math.prod(s) for s in net.param_shapes().values())
    need = 8 * (n_params + data_points * (widths[0] + widths[-1]))
    if need > MAX_PROBLEM_BYTES:
        raise ProblemError(f"argument arch={net.arch()!r} with data_points="
                           f"{data_points} needs {need / 2**30:.3g} GiB for its parameters and data, "
                           f"over the {MAX_PROBLEM_BYTES / 2**30:.3g} GiB that a problem may take",
                           argument="arch")
    gen = torch.Generator().manual_seed(seed)
    params = random_params(widths, gen) if net.is_plain else random_network_params(net, gen)
    n_out = widths[-1]
    if loss == "vae":
        x = torch.randint(0, 2, (data_points, widths[0]), generator=gen).to(torch.float64)
    else:
        x = torch.randn(data_points, widths[0], generator=gen, dtype=torch.float64)
    if loss == "logistic":
        y = torch.randint(0, 2, (data_points,), generator=gen).to(torch.float64) * 2 - 1
    elif loss == "softmax":
        y = torch.randint(0, n_out, (data_points,), generator=gen)
    elif loss == "mse":
        y = torch.randn(data_points, n_out, generator=gen, dtype=torch.float64)
    elif loss == "bernoulli":
        y = torch.randint(0, 2, (data_points, n_out), generator=gen).to(torch.float64)
    else:
        y = x.clone()
    name = f"arch-{net.arch()}-seed{seed}"
    return Problem(params, x, y, loss=loss, noise=noise, name=name,
                   network=None if net.is_plain else net, kl=kl)


def paper_data(gen: torch.Generator, per_class: int = 100) -> tuple[Tensor, Tensor]:
    """The paper's 2-D two-class data (SPEC §6): ``x [2·per_class, 2]``, labels ±1 ``[2·per_class]``.

    Class +1: ``x₀ ~ U(−π/2, π/2)``, ``x₁ ~ U(0, 1)``. Class −1: ``x₀ ~ U(−π/2, π/2)``,
    ``x₁ ~ U(−1, 1)`` kept only if ``x₁ < cos x₀`` (rejection sampling, in batches).
    """
    half = math.pi / 2
    pos = torch.stack([(torch.rand(per_class, generator=gen, dtype=torch.float64) * 2 - 1) * half,
                       torch.rand(per_class, generator=gen, dtype=torch.float64)], dim=1)
    neg_rows: list[Tensor] = []
    have = 0
    while have < per_class:
        cand = torch.stack(
            [(torch.rand(2 * per_class, generator=gen, dtype=torch.float64) * 2 - 1) * half,
             torch.rand(2 * per_class, generator=gen, dtype=torch.float64) * 2 - 1], dim=1)
        keep = cand[cand[:, 1] < torch.cos(cand[:, 0])]
        neg_rows.append(keep)
        have += keep.shape[0]
    neg = torch.cat(neg_rows)[:per_class]
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(per_class), -torch.ones(per_class)]).to(torch.float64)
    return x, y


def rescale_layers(params: dict[str, Tensor], x: Tensor, noise: Noise, gen: torch.Generator,
                   num_samples: int = 100) -> dict[str, Tensor]:
    """Data-dependent initialisation of SPEC §6.

    Layer by layer, each stochastic unit's weights and bias are rescaled so that its
    pre-activation has mean 0 and variance 1 over the data and ``num_samples`` sampled states
    of the (already rescaled) layers below. The output layer is left as drawn.
    """
    out = dict(params)
    h = x.expand(num_samples, *x.shape)  # [S, D, n0]
    for k in range(1, model.n_layers(params) + 1):
        w, b = out[f"weight_{k}"], out[f"bias_{k}"]
        a = model.linear(w, b, h).reshape(-1, w.shape[0])  # [S·D, n_k]
        mean, std = a.mean(0), a.std(0).clamp_min(1e-12)
        out[f"weight_{k}"] = w / std[:, None]
        out[f"bias_{k}"] = (b - mean) / std
        a = model.linear(out[f"weight_{k}"], out[f"bias_{k}"], h)
        # drawn with torch.rand, as since the first version: a preset problem never changes with
        # the estimators' sampling kernel (sbn_bench.model.bernoulli)
        h = (torch.rand(a.shape, generator=gen, dtype=a.dtype) < noise.cdf(a)).to(a.dtype)
    return out


PAPER_WIDTHS = (2, 5, 5, 5, 1)
QUICK_WIDTHS = (2, 3, 3, 1)


def paper_problem(seed: int = 0) -> Problem:
    """The paper's problem (SPEC §6): 200 2-D points, net 2-5-5-5-1, logistic noise and loss,
    weights ``U(−1, 1)`` then :func:`rescale_layers`. ``seed`` seeds one generator for all of it.
    """
    seed = check_seed(seed, error=ProblemError)
    gen = torch.Generator().manual_seed(seed)
    x, y = paper_data(gen)
    params = random_params(PAPER_WIDTHS, gen)
    params = rescale_layers(params, x, model.NOISES["logistic"], gen)
    return Problem(params, x, y, loss="logistic", noise="logistic", name=f"paper-seed{seed}")


def quick_problem(seed: int = 0) -> Problem:
    """A small, fast preset for smoke runs: the paper's data on a 2-3-3-1 net, rescaled likewise."""
    gen = torch.Generator().manual_seed(seed)
    x, y = paper_data(gen, per_class=50)
    params = rescale_layers(random_params(QUICK_WIDTHS, gen), x, model.NOISES["logistic"], gen)
    return Problem(params, x, y, name=f"quick-seed{seed}")


# --------------------------------------------------------------------------------------------
# digits presets (SPEC §7; sbn_bench.data)

DIGITS_ARCHS = {
    "digits-vae-exact": "64-16-64",
    "digits-vae": "64-200-64",
    "digits-vae-nonlinear": "64-d200:lrelu-d200:lrelu-200-d200:lrelu-d200:lrelu-64",
    "digits-mlp": "64-32-32-10",
    "digits-conv": "1x8x8-c8k3-c16k3s2-10",
}
"""The digits presets' networks (:mod:`sbn_bench.network` grammar): the binary VAE 64 → 16 latents →
64 with linear encoder and decoder (its 2¹⁶ latent states are enumerated: the exact ELBO gradient of
a real-data VAE), the DisARM protocol scaled to digits (200 latents; linear, and with LeakyReLU
MLPs of two 200-unit layers as encoder and decoder), and two classifiers beyond enumeration."""
DIGITS_TRAIN = 1438
"""Training images of the documented split (:mod:`sbn_bench.data`): every digits preset's ``D``."""


def digits_problem(name: str, seed: int = 0) -> Problem:
    """A digits preset (:data:`DIGITS_ARCHS`) on the training split.

    VAEs (loss ``vae``, analytic KL): inputs and targets the binarised images (``digits-vae-exact``:
    fixed binarisation; the others: one dynamic draw seeded with ``seed``); weights
    ``U(−1, 1)/√fan_in``, prior logits 0 and the decoder's output bias the logit of each pixel's mean
    (the usual VAE start). Classifiers (loss ``softmax``): the scaled pixels in ``[0, 1]`` as input,
    the classes as labels; weights ``U(−1, 1)/√fan_in``, biases ``U(−1, 1)``. ``seed`` seeds the
    parameters (and the dynamic binarisation).

    Raises:
        MissingExtra: scikit-learn is not installed (``pip install 'sbn-bench[data]'``).
    """
    from sbn_bench import data

    vae = name.startswith("digits-vae")
    net = network_of(DIGITS_ARCHS[name], "vae" if vae else "softmax")
    gen = torch.Generator().manual_seed(seed)
    params = random_network_params(net, gen)
    if vae:
        binarisation = "fixed" if name == "digits-vae-exact" else "dynamic"
        x = data.load_digits("train", binarisation, seed).x
        mean = x.mean(0).clamp(0.01, 0.99)
        params["bias_out"] = torch.log(mean / (1 - mean))
        params["prior_logits"] = torch.zeros_like(params["prior_logits"])
        return Problem(params, x, x.clone(), loss="vae", name=f"{name}-seed{seed}", network=net)
    d = data.load_digits("train", "none")
    return Problem(params, d.x, d.labels, loss="softmax", name=f"{name}-seed{seed}", network=net)


def _digits(name: str):  # noqa: ANN202 - a preset constructor
    return lambda seed=0: digits_problem(name, seed)


PRESETS = {"paper": paper_problem, "quick": quick_problem,
           **{name: _digits(name) for name in DIGITS_ARCHS}}
PRESET_SHAPES = {"paper": (PAPER_WIDTHS, 200), "quick": (QUICK_WIDTHS, 100),
                 **{name: (network_of(arch, "vae" if "vae" in name else "softmax").widths, DIGITS_TRAIN)
                    for name, arch in DIGITS_ARCHS.items()}}
"""``(widths, data points)`` of each preset, known before it is built (size checks run first)."""
PRESET_LOSS = {"paper": "logistic", "quick": "logistic",
               **{name: "vae" if "vae" in name else "softmax" for name in DIGITS_ARCHS}}
"""Each preset's loss (the exact reference's size depends on it)."""
PRESET_ESTIMATORS: dict[str, tuple[str, ...]] = {
    "digits-vae-exact": ("psa", "st", "reinforce", "reinforce-loo:k=2", "arm", "disarm",
                         "arms:k=4", "concrete:tau=0.5", "st-gumbel:tau=0.5", "tanh"),
    "digits-vae": ("psa", "st", "reinforce-loo:k=2", "disarm", "arms:k=4", "concrete:tau=0.5"),
    "digits-vae-nonlinear": ("psa", "st", "reinforce-loo:k=2", "disarm", "arms:k=4",
                             "concrete:tau=0.5"),
    "digits-mlp": ("psa", "st", "reinforce", "arm", "disarm", "concrete:tau=0.1", "tanh"),
    "digits-conv": ("psa", "st", "reinforce", "arm", "disarm", "concrete:tau=0.1", "tanh"),
}
"""Default estimators of the digits presets (when a run names none): the binary-VAE literature's
(REINFORCE-LOO, ARM, DisARM, ARMS, Concrete) beside PSA and ST; for the classifiers the paper's."""


PRESET_SAMPLES: dict[str, int] = {"digits-vae": 500, "digits-vae-nonlinear": 100, "digits-conv": 1500}
"""Default samples per cell (``--samples`` when not given) of the presets whose cells are slow:
``psa`` takes about 0.6 s per sample on the linear 200-latent VAE (a flip per latent, 1 438
images) and 6 s on the nonlinear one (each flip through the 200-200-64 decoder), the conv net's
cells about 0.2 s, so that a run of the default estimators stays within about 10 minutes on 2 cores
(15 on the nonlinear VAE). Every other preset: 2000."""

def preset_problem(name: str, seed: int = 0) -> Problem:
    """A named preset (``paper``, ``quick`` and the digits presets :data:`DIGITS_ARCHS`)."""
    if name not in PRESETS:
        raise ProblemError(f"argument preset={name!r} is unknown; expected one of "
                           f"{', '.join(PRESETS)}", argument="preset")
    return PRESETS[name](check_seed(seed, error=ProblemError))


# --------------------------------------------------------------------------------------------
# files


FILE_FORMAT = 2
"""The problem file format this version writes (it reads 1 and 2)."""


def save_problem(problem: Problem, path: str | os.PathLike[str], *, overwrite: bool = True
                 ) -> Path:
    """Write ``problem`` to ``path`` in the public ``.npz`` format (version :data:`FILE_FORMAT`),
    atomically (temp file + rename).

    Args:
        overwrite: replace an existing file (``sbn-bench problem`` passes False unless
            ``--overwrite``: the file may be a trained checkpoint).

    Raises:
        ProblemError: the file exists and ``overwrite`` is False, it cannot be written, or it
            would exceed :data:`MAX_FILE_BYTES` (which :func:`load_problem` refuses).
    """
    check_problem(problem)
    check_path(path, "path", ProblemError)
    if Path(path).is_dir():
        raise ProblemError(f"cannot write problem file {str(path)!r}: it is a folder; expected a file "
                           "name such as problem.npz", argument="path", value=str(path),
                           expected="a file path")
    if not isinstance(overwrite, bool):  # "no" is truthy: it would overwrite
        raise ProblemError(f"argument overwrite={overwrite!r} must be True or False",
                           argument="overwrite", value=overwrite, expected="True or False")
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):  # a link to nowhere is there too
        raise ProblemError(f"argument path={str(path)!r} exists; pass overwrite=True (--overwrite) "
                           "to replace it, or choose another file", argument="path",
                           value=str(path), expected="a path that does not exist yet")
    arrays: dict[str, np.ndarray] = {"x": problem.x.detach().cpu().numpy(),
                                     "y": problem.y.detach().cpu().numpy()}
    arrays.update({k: v.detach().cpu().to(torch.float64).numpy()
                   for k, v in problem.params.items()})
    arrays["loss"] = np.array(problem.loss)
    arrays["noise"] = np.array(problem.noise)
    arrays["format"] = np.array(str(FILE_FORMAT))
    arrays["network"] = np.array(json.dumps(problem.net.describe(), sort_keys=True))
    if problem.loss == "vae":
        arrays["kl"] = np.array(problem.kl)
    size = sum(a.nbytes for a in arrays.values())
    if size > MAX_FILE_BYTES:  # load_problem would refuse the file
        raise ProblemError(f"problem {problem.name!r} would take {size / 2**30:.3g} GiB as a file, "
                           f"over the {MAX_FILE_BYTES / 2**30:.3g} GiB a problem file may hold "
                           f"(load_problem's max_bytes), so no command could load it; use fewer "
                           f"data points (it has {problem.num_data})", argument="problem",
                           value=problem.name, expected=f"at most {MAX_FILE_BYTES} bytes of arrays")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    # through a symbolic link to its target (a rename onto the link would replace the link)
    dest = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        atomic_write_bytes(dest, buf.getvalue())
    except WriteError as e:
        raise ProblemError(f"cannot write problem file {str(path)!r}: {e.strerror or e}") from None
    return path


def _string_scalar(arr: np.ndarray, name: str, src: str) -> str:
    if arr.shape != () or arr.dtype.kind not in "US":
        raise _fail(src, name, f"must be a 0-d string array, got dtype {arr.dtype} shape "
                               f"{arr.shape}")
    if arr.dtype.kind == "U":
        return str(arr.item())
    try:
        return arr.item().decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(src, name, f"holds bytes {arr.item()!r} that are not UTF-8 text") from None


def _real_array(arr: np.ndarray, name: str, src: str) -> Tensor:
    if arr.dtype.kind not in "fiub":
        raise _fail(src, name, f"has dtype {arr.dtype}, expected a real numeric array")
    return torch.from_numpy(np.array(arr, dtype=np.float64))


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip
_NPY_MAGIC = b"\x93NUMPY"


MAX_FILE_BYTES = 2**30
"""Most bytes the arrays of a problem file may declare, in total (1 GiB; the digits presets take
about 1 MB): every member's shape × item size is checked against it before anything is read, so a
small archive that would decompress to gigabytes (a zip bomb) is refused. ``load_problem(path,
max_bytes=…)`` raises it."""


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: str
                   ) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` member declares, read from its header only."""
    name = info.filename.removesuffix(".npy")
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception as e:  # noqa: BLE001 - any header error means "not an npy array"
            raise _fail(src, name, f"is not an .npy array ({type(e).__name__}: "
                                   f"{str(e).strip() or 'bad header'})") from None
    if dtype.hasobject:
        raise _fail(src, name, "holds Python objects (pickles are not loaded)")
    return tuple(int(n) for n in shape), dtype


def _read_arrays(path: Path, src: str, max_bytes: int = MAX_FILE_BYTES) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive at ``path`` (no pickles), or a ProblemError.

    The archive is checked by its magic bytes first, so that a text, pickle or ``.npy`` file gets
    a message about what it is. Then every member's name (``NAME.npy``, each once) and header (shape,
    dtype) are checked, and the declared sizes summed against ``max_bytes``, before any array is
    read. Any failure while reading (truncated archive, corrupt deflate stream, bad header) becomes a
    ProblemError naming the file (and the member).
    """
    whole: dict[str, Any] = dict(argument="path", value=str(path), expected="an .npz problem file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ProblemError(f"problem file {src} cannot be read ({e.strerror or e})",
                           **whole) from None
    if head.startswith(_NPY_MAGIC):
        raise ProblemError(f"problem file {src} is not a readable .npz archive (it holds a single "
                           ".npy array; write problems with np.savez or sbn-bench problem)",
                           **whole)
    if not head.startswith(_ZIP_MAGIC):
        what = "it is empty" if not head else "it does not start with a zip header"
        raise ProblemError(f"problem file {src} is not a readable .npz archive ({what}; write "
                           "problems with np.savez or sbn-bench problem)", **whole)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ProblemError(f"problem file {src} holds the member(s) {', '.join(dup)} more "
                                   "than once (which one counts would be ambiguous)",
                                   argument=dup[0].removesuffix(".npy"), value=dup,
                                   expected="each array once")  # as an array's error names it
            total = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise _fail(src, info.filename, "is not an .npy array (an .npz archive holds "
                                                    "NAME.npy members only)")
                shape, dtype = _member_header(zf, info, src)
                total += math.prod(shape) * dtype.itemsize
                if total > max_bytes:
                    raise ProblemError(
                        f"problem file {src}: array {info.filename.removesuffix('.npy')!r} declares "
                        f"shape {shape} of {dtype} and the arrays so far {total:,} bytes, over the "
                        f"{max_bytes:,} bytes a problem file may hold (max_bytes); refused before "
                        "reading", argument="max_bytes", value=max_bytes,
                        expected=f"at least {total:,} bytes")
            out = {}
            for info in infos:
                with zf.open(info) as f:
                    out[info.filename.removesuffix(".npy")] = np.lib.format.read_array(
                        f, allow_pickle=False)
            return out
    except ProblemError:
        raise
    except Exception as e:  # zipfile, zlib, struct, numpy header errors: all mean "corrupt"
        detail = str(e).strip() or type(e).__name__
        if "pickle" in detail:
            detail = "an array holds Python objects (pickles are not loaded)"
        raise ProblemError(f"problem file {src} is not a readable .npz archive "
                           f"({type(e).__name__}: {detail})", **whole) from None


def load_problem(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> Problem:
    """Read and validate a problem file (format in the module docstring).

    Args:
        max_bytes: most bytes the file's arrays may declare in total (:data:`MAX_FILE_BYTES`).

    Raises:
        ProblemError: the file is missing, not an ``.npz`` archive, truncated or corrupt, or any
            array is missing, unexpected, of the wrong shape or dtype, non-finite, or the loss, noise
            or labels are invalid; the message names the file and the array. Nothing else is raised
            (fuzzed in ``tests/test_problems.py``).
    """
    check_path(path, "path", ProblemError)
    max_bytes = check_whole(max_bytes, "max_bytes", error=ProblemError, unit="bytes", unlimited=True)
    path = Path(path)
    src = repr(str(path))
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise ProblemError(f"problem file {src} {why}", argument="path", value=str(path),
                           expected="an .npz problem file")
    raw = _read_arrays(path, src, max_bytes)
    for name in ("x", "y"):
        if name not in raw:
            raise _fail(src, name, "is missing")
    for name, ndim in (("x", 2), ("y", (1, 2))):
        dims = ndim if isinstance(ndim, tuple) else (ndim,)
        if raw[name].ndim not in dims:
            raise _fail(src, name, f"has shape {raw[name].shape}, expected "
                                   + (f"{dims[0]} dimensions" if len(dims) == 1 else
                                      " or ".join(map(str, dims)) + " dimensions"))
    loss = _string_scalar(raw.pop("loss"), "loss", src) if "loss" in raw else "logistic"
    noise = _string_scalar(raw.pop("noise"), "noise", src) if "noise" in raw else "logistic"
    version = _string_scalar(raw.pop("format"), "format", src) if "format" in raw else "1"
    if version not in ("1", "2"):
        raise _fail(src, "format", f"is {version!r}, expected '1' or '2' (a file from a newer "
                                   "sbn-bench? upgrade it)")
    net = described = None
    if "network" in raw:
        if version == "1":
            raise _fail(src, "network", "is only read from format 2 files (add format = '2')")
        text = _string_scalar(raw.pop("network"), "network", src)
        try:
            net = from_description(json.loads(text), source=f"problem file {src}: network")
        except (json.JSONDecodeError, RecursionError) as e:
            raise _fail(src, "network", f"is not valid JSON ({type(e).__name__})") from None
        except NetworkError as e:
            raise ProblemError(str(e), argument="network") from None
        if net.is_plain:
            described, net = net, None  # the same network, read from the names as in version 1
    kl = _string_scalar(raw.pop("kl"), "kl", src) if "kl" in raw else "analytic"
    if kl != "analytic" and kl in KL_MODES and loss != "vae":  # as prior_logits: a VAE's only
        raise _fail(src, "kl", f"is {kl!r} in a file of loss {loss!r}; only a 'vae' problem's file "
                               "holds kl (remove it)")
    x = _real_array(raw.pop("x"), "x", src)
    y = _real_array(raw.pop("y"), "y", src)
    params = {}
    for name, arr in raw.items():
        t = _real_array(arr, name, src)
        if name.startswith("bias_") and t.dim() == 2 and t.shape[0] == 1:
            t = t[0]
        params[name] = t
    problem = Problem(params, x, y, loss=loss, noise=noise, name=path.stem,
                      meta={"source": str(path)}, network=net, kl=kl)
    if described is not None and problem.net.describe() != described.describe():
        raise _fail(src, "network", f"describes the network {described.arch()!r}, but the "
                                    f"arrays are those of {problem.net.arch()!r}; expected "
                                    "a description of the file's own arrays")
    return problem
