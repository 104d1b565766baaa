"""Networks beyond the paper's (SPEC §7): ``body → stochastic layers → head → loss``.

A :class:`Network` describes the layers; the parameters stay in the problem's plain dict, under
public names:

* the **body** (deterministic, applied to the real input): ``body_weight_i``, ``body_bias_i`` for
  its ``i``-th linear or conv2d layer, with ``relu`` / ``leakyrelu`` / ``tanh`` / ``flatten``
  between them (no parameters); it may be empty;
* the **stochastic layers** ``k = 1..L``: ``weight_k``, ``bias_k``, dense (``[n_k, n_{k-1}]``) or
  conv2d (``[C_out, C_in, k_h, k_w]``, a bias per channel, any stride and padding); each unit of a
  conv layer's ``[C, H, W]`` map fires independently with ``F(a)``;
* the **head** (deterministic, from the last stochastic layer's states to the output ``η``):
  ``head_weight_i``, ``head_bias_i`` for all but its last linear layer, which is ``weight_out``,
  ``bias_out``;
* ``prior_logits`` (``[n_1]``) for the binary VAE's learnable factorised Bernoulli prior.

Inside the estimators every stochastic layer's states are a flat last dimension ``n_k = C·H·W``
(flattened channel-major, as ``torch.flatten``): the estimator contract does not change with the
layer kinds. The paper's network is the special case with an empty body, dense layers and a
one-layer linear head (:meth:`Network.plain`), and computes exactly as before.

The compact architecture grammar (:func:`parse_network`, ``--arch``) writes a network as tokens
separated by ``-``: the input (``64`` or ``1x8x8``), then layers, the last token being the output
width (a linear layer). A plain integer or ``c<C>k<K>[s<S>][p<P>]`` is a *stochastic* dense or
conv2d layer; a deterministic layer is prefixed with ``d`` and may carry an activation after a
colon: ``d200:lrelu`` (dense), ``dc8k3s2:relu`` (conv2d); ``lrelu0.1`` gives LeakyReLU another
slope than its default 0.3 (``lrelum0.1``: −0.1). Deterministic layers before the first
stochastic layer form the body, those after the last form the head. Examples: ``2-5-5-5-1`` (the
paper's), ``1x8x8-c8k3-c16k3s2-10`` (digits-conv), ``64-d200:lrelu-d200:lrelu-200-d200:lrelu-
d200:lrelu-64`` (the DisARM nonlinear VAE scaled to digits).

References:
    Shekhovtsov, Yanush, Flach. NeurIPS 2020 (deep convolutional SBNs); Dong, Mnih, Tucker.
    "DisARM". NeurIPS 2020 (the binary VAE protocol; LeakyReLU slope 0.3 as in their code).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as tnf
from torch import Tensor

from sbn_bench.errors import ArgumentError, is_integer

Params = Mapping[str, Tensor]

ACTIVATIONS = ("relu", "leakyrelu", "tanh")
"""Deterministic activations (``lrelu`` is accepted as a short name of ``leakyrelu``)."""
DETERMINISTIC_KINDS = ("linear", "conv2d", *ACTIVATIONS, "flatten")
STOCHASTIC_KINDS = ("dense", "conv2d")
LEAKY_SLOPE = 0.3
"""LeakyReLU's negative slope: 0.3, as the DisARM code's Keras layers."""

NETWORK_FORMAT = 1
"""Version of :meth:`Network.describe`'s JSON (the problem file format v2 stores it)."""


class NetworkError(ArgumentError):
    """An architecture that cannot be built: a bad token, incompatible shapes, a missing layer."""


@dataclass(frozen=True)
class Layer:
    """One layer: its kind, the shapes of one data point's input and output, and for linear and
    conv2d layers its parameter names and geometry.

    Attributes:
        kind: a :data:`DETERMINISTIC_KINDS` kind, or ``"dense"`` / ``"conv2d"`` for a stochastic
            layer.
        in_shape, out_shape: ``(n,)`` or ``(C, H, W)`` per data point.
        weight, bias: parameter names (``""`` for layers without parameters).
        kernel, stride, padding: conv2d geometry (square kernels).
        slope: LeakyReLU's negative slope.
    """

    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: str = ""
    bias: str = ""
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    slope: float = LEAKY_SLOPE

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind in ("linear", "dense"):
            return (self.n_out, self.n_in)
        if self.kind == "conv2d":
            return (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel)
        return ()

    @property
    def bias_shape(self) -> tuple[int, ...]:
        if self.kind in ("linear", "dense"):
            return (self.n_out,)
        if self.kind == "conv2d":
            return (self.out_shape[0],)
        return ()

    @property
    def has_params(self) -> bool:
        return bool(self.weight)

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.kind, "in": list(self.in_shape),
                                "out": list(self.out_shape)}
        if self.kind == "conv2d":
            d.update(kernel=self.kernel, stride=self.stride, padding=self.padding)
        if self.kind == "leakyrelu":
            d["slope"] = self.slope
        return d


@dataclass(frozen=True)
class Network:
    """``body → stochastic layers → head``; see the module docstring for the parameter names.

    Attributes:
        input_shape: one data point's input, ``(n0,)`` or ``(C, H, W)`` (stored flat in ``x``).
        body: deterministic layers on the input (may be empty).
        stochastic: the ``L ≥ 1`` stochastic layers.
        head: deterministic layers ending with the output linear layer ``weight_out``.
        prior: the binary VAE's ``prior_logits`` parameter is part of the network.
    """

    input_shape: tuple[int, ...]
    body: tuple[Layer, ...] = ()
    stochastic: tuple[Layer, ...] = ()
    head: tuple[Layer, ...] = ()
    prior: bool = False
    _plain: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def plain(cls, widths: Sequence[int]) -> Network:
        """The paper's kind of network for ``widths = (n0, n_1, …, n_L, n_out)``."""
        widths = tuple(int(w) for w in widths)
        st = tuple(Layer("dense", (a,), (b,), f"weight_{k}", f"bias_{k}")
                   for k, (a, b) in enumerate(zip(widths[:-2], widths[1:-1]), start=1))
        head = (Layer("linear", (widths[-2],), (widths[-1],), "weight_out", "bias_out"),)
        return cls((widths[0],), (), st, head, False, True)

    @property
    def is_plain(self) -> bool:
        """No body, dense stochastic layers, a one-layer linear head, no prior."""
        return (not self.body and not self.prior and len(self.head) == 1
                and all(layer.kind == "dense" for layer in self.stochastic))

    @property
    def n_layers(self) -> int:
        return len(self.stochastic)

    @property
    def widths(self) -> tuple[int, ...]:
        """``(n0, n_1, …, n_L, n_out)`` with every shape flattened (``n0`` the input's size)."""
        return (math.prod(self.input_shape), *(s.n_out for s in self.stochastic),
                self.head[-1].n_out)

    @property
    def stochastic_input_shape(self) -> tuple[int, ...]:
        return self.stochastic[0].in_shape

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The kinds of the stochastic layers."""
        return tuple(s.kind for s in self.stochastic)

    @property
    def parts(self) -> frozenset[str]:
        """The structural features an estimator must support: ``"body"`` (a non-empty body),
        ``"head"`` (a head deeper than one linear layer)."""
        out = set()
        if self.body:
            out.add("body")
        if not self.linear_head:
            out.add("head")
        return frozenset(out)

    @property
    def linear_head(self) -> bool:
        """The head is the output linear layer alone (after a flatten, for a conv layer)."""
        return all(layer.kind == "flatten" for layer in self.head[:-1])

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, in network order (body, stochastic, head, output, prior)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in (*self.body, *self.stochastic, *self.head):
            if layer.has_params:
                shapes[layer.weight] = layer.weight_shape
                shapes[layer.bias] = layer.bias_shape
        if self.prior:
            shapes["prior_logits"] = (self.stochastic[0].n_out,)
        return shapes

    def describe(self) -> dict[str, object]:
        """The JSON-able description stored in problem files (format v2)."""
        return {"format": NETWORK_FORMAT, "input": list(self.input_shape),
                "body": [layer.describe() for layer in self.body],
                "stochastic": [layer.describe() for layer in self.stochastic],
                "head": [layer.describe() for layer in self.head], "prior": self.prior}

    def arch(self) -> str:
        """The compact grammar of this network (:func:`parse_network` reads it back)."""
        def shape(s: tuple[int, ...]) -> str:
            return "x".join(map(str, s))

        def token(layer: Layer, stochastic: bool) -> str:
            if layer.kind in ("dense", "linear"):
                t = str(layer.n_out)
            else:
                t = f"c{layer.out_shape[0]}k{layer.kernel}"
                t += f"s{layer.stride}" if layer.stride != 1 else ""
                t += f"p{layer.padding}" if layer.padding else ""
            return t if stochastic else "d" + t

        tokens = [shape(self.input_shape)]
        for part, stochastic in ((self.body, False), (self.stochastic, True),
                                 (self.head[:-1], False)):
            for layer in part:
                if layer.kind in ACTIVATIONS:
                    tokens[-1] += ":" + (_lrelu_token(layer.slope) if layer.kind == "leakyrelu"
                                         else layer.kind)
                elif layer.kind != "flatten":
                    tokens.append(token(layer, stochastic))
        tokens.append(str(self.head[-1].n_out))
        return "-".join(tokens)


# --------------------------------------------------------------------------------------------
# building


def _conv_out(shape: tuple[int, ...], channels: int, kernel: int, stride: int, padding: int,
              where: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise NetworkError(f"{where}: a conv2d layer needs a [C, H, W] input, got shape "
                           f"{list(shape)}", argument="arch", value=where,
                           expected="a conv2d layer after an image input or another conv2d layer")
    _, h, w = shape
    if channels < 1:
        raise NetworkError(f"{where}: a conv2d layer needs at least one channel, got {channels}",
                           argument="arch", value=where, expected="channels ≥ 1")
    ok = kernel >= 1 and stride >= 1 and padding >= 0
    oh = (h + 2 * padding - kernel) // stride + 1 if ok else 0
    ow = (w + 2 * padding - kernel) // stride + 1 if ok else 0
    if not ok or oh < 1 or ow < 1:
        raise NetworkError(f"{where}: kernel {kernel}, stride {stride}, padding {padding} do not fit "
                           f"an input of shape {list(shape)}", argument="arch", value=where,
                           expected="kernel ≥ 1, stride ≥ 1, padding ≥ 0 and an output ≥ 1×1")
    return (channels, oh, ow)


@dataclass
class _Builder:
    shape: tuple[int, ...]
    body: list[Layer] = field(default_factory=list)
    stochastic: list[Layer] = field(default_factory=list)
    head: list[Layer] = field(default_factory=list)

    def part(self) -> list[Layer]:
        return self.head if self.stochastic else self.body

    def add(self, kind: str, where: str, *, width: int = 0, channels: int = 0, kernel: int = 0,
            stride: int = 1, padding: int = 0, stochastic: bool = False,
            slope: float = LEAKY_SLOPE) -> None:
        if kind in ACTIVATIONS:
            self.part().append(Layer(kind, self.shape, self.shape, slope=slope))
            return
        if stochastic and self.head:
            raise NetworkError(f"{where}: a stochastic layer after deterministic head layers; "
                               "deterministic layers go before the first stochastic layer (body) "
                               "or after the last (head)", argument="arch", value=where,
                               expected="body, stochastic layers, head")
        if kind in ("dense", "linear"):
            if len(self.shape) > 1:
                self.part().append(Layer("flatten", self.shape, (math.prod(self.shape),)))
                self.shape = (math.prod(self.shape),)
            out: tuple[int, ...] = (width,)
            if width < 1:
                raise NetworkError(f"{where}: a layer needs at least one unit", argument="arch",
                                   value=where, expected="a width ≥ 1")
        else:
            out = _conv_out(self.shape, channels, kernel, stride, padding, where)
        if stochastic:
            k = len(self.stochastic) + 1
            self.stochastic.append(Layer(kind if kind == "conv2d" else "dense", self.shape, out,
                                         f"weight_{k}", f"bias_{k}", kernel, stride, padding))
        else:
            part = "head" if self.stochastic else "body"
            i = sum(1 for layer in self.part() if layer.has_params) + 1
            self.part().append(Layer(kind, self.shape, out, f"{part}_weight_{i}",
                                     f"{part}_bias_{i}", kernel, stride, padding))
        self.shape = out

    def finish(self, n_out: int, prior: bool, where: str,
               how: str = "plain integers or c<C>k<K> tokens") -> Network:
        if not self.stochastic:
            raise NetworkError(f"{where}: no stochastic layer ({how})",
                               argument="arch", value=where, expected="at least one stochastic layer")
        if n_out < 1:
            raise NetworkError(f"{where}: the output width must be ≥ 1", argument="arch",
                               value=where, expected="an output width ≥ 1")
        if len(self.shape) > 1:
            self.head.append(Layer("flatten", self.shape, (math.prod(self.shape),)))
            self.shape = (math.prod(self.shape),)
        self.head.append(Layer("linear", self.shape, (n_out,), "weight_out", "bias_out"))
        net = Network(self.input, tuple(self.body), tuple(self.stochastic), tuple(self.head), prior)
        return replace(net, _plain=net.is_plain)

    input: tuple[int, ...] = ()


_TOKEN = re.compile(r"(?P<det>d)?(?:(?P<width>\d+)|c(?P<ch>\d+)k(?P<k>\d+)(?:s(?P<s>\d+))?"
                    r"(?:p(?P<p>\d+))?)(?::(?P<act>relu|lrelu|leakyrelu|tanh)"
                    r"(?P<slope>m?\d+(?:\.\d+)?(?:e[+]?\d+|em\d+)?)?)?")


def _lrelu_token(slope: float) -> str:
    """``lrelu`` for the default slope, else ``lrelu<slope>`` with ``m`` for a minus sign (the
    grammar's ``-`` separates tokens): ``lrelu0.1``, ``lrelum0.5``."""
    if slope == LEAKY_SLOPE:
        return "lrelu"
    return "lrelu" + repr(float(slope)).replace("-", "m")


def _slope(text: str) -> float:
    return float(text.replace("m", "-"))


def parse_network(arch: str, *, prior: bool = False) -> Network:
    """A :class:`Network` from the compact grammar of the module docstring.

    Raises:
        NetworkError: naming the token and what was expected.
    """
    text = str(arch).strip()
    tokens = text.split("-")
    expected = ("tokens separated by '-': an input (64 or 1x8x8), layers (16, c8k3s2p1 stochastic; "
                "d200:relu, dc8k3 deterministic) and an output width, e.g. 1x8x8-c8k3-c16k3s2-10")
    if len(tokens) < 3:
        raise NetworkError(f"argument arch={text!r} needs an input, at least one stochastic layer and "
                           "an output width", argument="arch", value=text, expected=expected)
    if not re.fullmatch(r"\d+(x\d+x\d+)?", tokens[0]):
        raise NetworkError(f"argument arch={text!r}: input {tokens[0]!r} is not a width (64) or an "
                           "image shape (1x8x8)", argument="arch", value=text, expected=expected)
    shape = tuple(int(v) for v in tokens[0].split("x"))
    if min(shape) < 1:
        raise NetworkError(f"argument arch={text!r}: the input shape must be positive",
                           argument="arch", value=text, expected=expected)
    b = _Builder(shape, input=shape)
    for tok in tokens[1:-1]:
        m = _TOKEN.fullmatch(tok)
        if m is None:
            raise NetworkError(f"argument arch={text!r}: token {tok!r} is not a layer; expected "
                               f"{expected}", argument="arch", value=tok, expected=expected)
        where = f"arch {text!r}, layer {tok!r}"
        stochastic = m["det"] is None
        if stochastic and m["act"]:
            raise NetworkError(f"{where}: a stochastic layer takes no activation (its units are "
                               "binary)", argument="arch", value=tok, expected=expected)
        if m["width"] is not None:
            b.add("dense" if stochastic else "linear", where, width=int(m["width"]),
                  stochastic=stochastic)
        else:
            b.add("conv2d", where, channels=int(m["ch"]), kernel=int(m["k"]),
                  stride=int(m["s"] or 1), padding=int(m["p"] or 0), stochastic=stochastic)
        if m["slope"] and m["act"] not in ("lrelu", "leakyrelu"):
            raise NetworkError(f"{where}: only lrelu takes a slope ({m['act']}{m['slope']})",
                               argument="arch", value=tok, expected=expected)
        slope = _slope(m["slope"]) if m["slope"] else LEAKY_SLOPE
        if not math.isfinite(slope):  # lrelu1e400 reads as inf
            raise NetworkError(f"{where}: the slope {m['slope']} is not a finite number",
                               argument="arch", value=tok, expected="a finite LeakyReLU slope")
        if m["act"]:
            b.add("leakyrelu" if m["act"] in ("lrelu", "leakyrelu") else m["act"], where,
                  slope=slope)
    if not re.fullmatch(r"\d+", tokens[-1]):
        raise NetworkError(f"argument arch={text!r}: the last token {tokens[-1]!r} must be the output "
                           "width", argument="arch", value=text, expected=expected)
    return b.finish(int(tokens[-1]), prior, f"arch {text!r}")


def from_layers(input_shape: Sequence[int], layers: Sequence[Mapping[str, object]], *,
                prior: bool = False, source: str = "layers") -> Network:
    """A :class:`Network` from a list of layer tables (TOML/JSON), for what the grammar cannot say
    (e.g. a LeakyReLU slope): each ``{"kind": "dense"|"conv2d"|"linear"|"relu"|"leakyrelu"|"tanh",
    "stochastic": bool, "units": n}`` or, for conv2d, ``"channels", "kernel", "stride",
    "padding"``; ``"slope"`` for leakyrelu. Each kind takes only its own keys (:data:`LAYER_KEYS`),
    and activations cannot be stochastic (``linear`` with ``"stochastic": true`` is ``dense``). The
    last layer must be the output ``linear`` layer.

    Raises:
        NetworkError: naming the layer (by index) and the problem.
    """
    shape = tuple(int(v) for v in input_shape)
    if not shape or min(shape) < 1 or len(shape) not in (1, 3):
        raise NetworkError(f"{source}: input shape {list(shape)} must be [n] or [C, H, W] with "
                           "positive sizes", argument="input", value=list(shape),
                           expected="[n] or [C, H, W]")
    b = _Builder(shape, input=shape)
    if not layers:
        raise NetworkError(f"{source}: no layers", argument="layers", value=[],
                           expected="stochastic layers and an output layer")
    for i, spec in enumerate(layers[:-1]):
        where = f"{source}[{i}]"
        if not isinstance(spec, Mapping):
            raise NetworkError(f"{where} is {spec!r}, expected a table", argument="layers",
                               value=spec, expected="a table with a 'kind'")
        kind = str(spec.get("kind", ""))
        unknown = set(spec) - {"kind", "stochastic", "units", "channels", "kernel", "stride",
                               "padding", "slope"}
        if unknown:
            raise NetworkError(f"{where}: unknown keys {sorted(unknown)}", argument="layers",
                               value=sorted(unknown), expected="kind, stochastic, units, channels, "
                                                               "kernel, stride, padding, slope")
        stochastic = _typed(spec, "stochastic", bool, False, where)
        if kind in LAYER_KEYS:  # a key another kind takes was ignored here ("units" on a relu)
            _own_keys(spec, LAYER_KEYS[kind], f"{where}: a {kind!r} layer")
            if stochastic and kind in ACTIVATIONS:  # was read as deterministic without a word
                raise NetworkError(f"{where}: a {kind!r} layer cannot be stochastic (a stochastic layer is "
                                   '{"kind": "dense", "stochastic": true, "units": n} or a conv2d)',
                                   argument="layers", value=kind, expected="dense or conv2d")
        if kind in ACTIVATIONS:
            b.add(kind, where, slope=_typed(spec, "slope", float, LEAKY_SLOPE, where))
        elif kind in ("dense", "linear"):
            b.add("dense" if stochastic else "linear", where, width=_typed(spec, "units", int, 0, where),
                  stochastic=stochastic)
        elif kind == "conv2d":
            b.add("conv2d", where, channels=_typed(spec, "channels", int, 0, where),
                  kernel=_typed(spec, "kernel", int, 0, where), stride=_typed(spec, "stride", int, 1, where),
                  padding=_typed(spec, "padding", int, 0, where), stochastic=stochastic)
        else:
            kinds = ", ".join(("dense", *DETERMINISTIC_KINDS))
            what = f"kind {kind!r} is unknown" if "kind" in spec else "has no 'kind'"
            raise NetworkError(f"{where}: {what} (expected one of {kinds})", argument="layers",
                               value=kind, expected=f"one of {kinds}")
    last = layers[-1]
    if not isinstance(last, Mapping) or last.get("kind") != "linear" or last.get("stochastic"):
        raise NetworkError(f"{source}[{len(layers) - 1}] must be the output layer "
                           "{kind = \"linear\", units = n_out}", argument="layers", value=last,
                           expected="a final linear layer")
    _typed(last, "stochastic", bool, False, f"{source}[{len(layers) - 1}]")
    _own_keys(last, LAYER_KEYS["linear"], f"{source}[{len(layers) - 1}]: the output layer")
    return b.finish(_typed(last, "units", int, 0, f"{source}[{len(layers) - 1}]"), prior, source,
                    'a layer with "stochastic": true')


LAYER_KEYS: dict[str, set[str]] = {
    "dense": {"kind", "stochastic", "units"}, "linear": {"kind", "stochastic", "units"},
    "conv2d": {"kind", "stochastic", "channels", "kernel", "stride", "padding"},
    "relu": {"kind", "stochastic"}, "tanh": {"kind", "stochastic"},
    "leakyrelu": {"kind", "stochastic", "slope"},
}
"""The keys each kind of a layer table takes (:func:`from_layers`); ``stochastic`` is refused as
true on an activation."""


def _own_keys(spec: Mapping[str, object], keys: set[str], what: str) -> None:
    """Refuse the keys of a layer table beyond ``keys`` (another kind's, which were ignored)."""
    if foreign := sorted(set(spec) - keys):
        own = ", ".join(sorted(keys))
        raise NetworkError(f"{what} takes no {', '.join(map(repr, foreign))} (its keys: {own})",
                           argument="layers", value=foreign, expected=own)


def _typed(spec: Mapping[str, object], key: str, kind: type, default: object, where: str) -> Any:
    """``spec[key]`` (or ``default``) checked to be a ``bool``, a whole number or a finite number:
    a JSON ``"false"`` or ``"3"`` is refused rather than read as ``True`` or 3."""
    v = spec.get(key, default)
    if kind is bool:
        ok, expected = isinstance(v, bool), "true or false"
    elif kind is int:
        ok, expected = is_integer(v), "a whole number"
    else:
        try:
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
        except OverflowError:  # an integer beyond any float
            ok = False
        expected = "a finite number"
    if not ok:
        raise NetworkError(f"{where}.{key} is {v!r}, expected {expected}", argument="layers", value=v,
                           expected=expected)
    return kind(v)


def from_description(d: Mapping[str, object], source: str = "network") -> Network:
    """The :class:`Network` of :meth:`Network.describe` (problem files, format v2).

    Raises:
        NetworkError: a malformed description, naming what is wrong.
    """
    if not isinstance(d, Mapping) or d.get("format") != NETWORK_FORMAT:
        raise NetworkError(f"{source}: not a network description of format {NETWORK_FORMAT}",
                           argument="network", value=str(d)[:80], expected=f"format {NETWORK_FORMAT}")
    try:
        shape = [int(v) for v in d["input"]]  # type: ignore[union-attr]
        layers: list[dict[str, object]] = []
        for part, stochastic in (("body", False), ("stochastic", True), ("head", False)):
            for layer in d[part]:  # type: ignore[union-attr]
                kind = str(layer["kind"])
                if kind == "flatten":
                    continue
                table_kind = ("dense" if stochastic else "linear") if kind in ("dense", "linear") else kind
                spec: dict[str, object] = {"kind": table_kind, "stochastic": stochastic}
                if kind in ("dense", "linear"):
                    spec["units"] = int(math.prod(layer["out"]))
                elif kind == "conv2d":
                    spec.update(channels=int(layer["out"][0]), kernel=int(layer["kernel"]),
                                stride=int(layer["stride"]), padding=int(layer["padding"]))
                elif kind == "leakyrelu":
                    spec["slope"] = float(layer.get("slope", LEAKY_SLOPE))
                layers.append(spec)
        prior = bool(d.get("prior", False))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise NetworkError(f"{source}: malformed network description ({type(e).__name__}: {e})",
                           argument="network", value=str(d)[:80],
                           expected="the JSON of Network.describe()") from None
    if "prior" in d and not isinstance(d["prior"], bool):
        raise NetworkError(f"{source}: prior={d['prior']!r} must be true or false",
                           argument="network", value=str(d)[:80], expected="prior: true or false")
    net = from_layers(shape, layers, prior=prior, source=source)
    want = net.describe()
    unknown = [f"{k!r}" for k in sorted(map(str, set(d) - set(want)))]
    for part in ("body", "stochastic", "head"):
        got = d.get(part)
        if isinstance(got, list) and len(got) == len(want[part]):  # type: ignore[arg-type]
            for i, (g, w) in enumerate(zip(got, want[part])):  # type: ignore[call-overload]
                unknown += [f"{k!r} (of {part}[{i}])" for k in sorted(map(str, set(g) - set(w)))]
    missing = [k for k in want if k not in d]
    if unknown or missing:
        raise NetworkError(f"{source}: the network description has "
                           + "; ".join(([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
                                       + ([f"no {', '.join(missing)}"] if missing else []))
                           + f"; its keys: {', '.join(want)}", argument="network",
                           value=str(d)[:80], expected="the JSON of Network.describe()")
    if json.dumps(want, sort_keys=True) != json.dumps(dict(d), sort_keys=True):
        differ = [k for k in want
                  if json.dumps(want[k], sort_keys=True) != json.dumps(d.get(k), sort_keys=True)]
        raise NetworkError(f"{source}: the layers' shapes do not follow from the input and the "
                           f"layer settings (they differ in: {', '.join(differ)})",
                           argument="network", value=str(d)[:80], expected="consistent shapes")
    return net


# --------------------------------------------------------------------------------------------
# computing


def _flat_batch(h: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    lead = h.shape[:-1]
    return h.reshape(-1, *shape), lead


def conv2d(layer: Layer, weight: Tensor, bias: Tensor, h: Tensor) -> Tensor:
    """A conv2d layer on flat states ``h [..., n_in]`` → ``[..., n_out]`` (channel-major
    flattening). ``weight`` is one ``[C_out, C_in, k, k]`` tensor or replicas ``[S, …]`` with
    ``h [..., S, D, n_in]`` or ``h [D, n_in]`` (shared by the samples)."""
    if weight.dim() == 4:
        x, lead = _flat_batch(h, layer.in_shape)
        out = tnf.conv2d(x, weight, bias, layer.stride, layer.padding)
        return out.reshape(*lead, layer.n_out)
    from sbn_bench import model  # the replicated fast path lives with the dense one

    return model.replicated_conv2d(weight, bias, h, layer)


def apply_layer(layer: Layer, params: Params, h: Tensor) -> Tensor:
    """One deterministic (or a stochastic layer's pre-activation) layer on flat ``h``."""
    from sbn_bench import model

    kind = layer.kind
    if kind in ("linear", "dense"):
        return model.linear(params[layer.weight], params[layer.bias], h)
    if kind == "conv2d":
        return conv2d(layer, params[layer.weight], params[layer.bias], h)
    if kind == "relu":
        return torch.relu(h)
    if kind == "leakyrelu":
        return tnf.leaky_relu(h, layer.slope)
    if kind == "tanh":
        return torch.tanh(h)
    if kind == "flatten":
        return h
    raise AssertionError(f"unknown layer kind {kind!r}")


def apply_layers(layers: Sequence[Layer], params: Params, h: Tensor) -> Tensor:
    for layer in layers:
        h = apply_layer(layer, params, h)
    return h


def stochastic_input(net: Network, params: Params, x: Tensor) -> Tensor:
    """What the first stochastic layer sees: the body applied to the real input ``x [D, n0]``
    (``[S, D, m]`` with replicas, ``[D, m]`` with shared parameters), or ``x`` itself."""
    return apply_layers(net.body, params, x) if net.body else x


def preactivation(net: Network, params: Params, k: int, h: Tensor) -> Tensor:
    """``a^k`` of stochastic layer ``k`` (1-based) from its input ``h [..., n_{k-1}]``:
    ``[..., n_k]`` (flat units)."""
    return apply_layer(net.stochastic[k - 1], params, h)


def output(net: Network, params: Params, h: Tensor) -> Tensor:
    """The output ``η`` from the last stochastic layer's states (or relaxations): the head."""
    return apply_layers(net.head, params, h)


def kl_per_point(net: Network, params: Params, x: Tensor, noise: object) -> Tensor:
    """The binary VAE's analytic ``KL(q(z|x_d) ‖ p(z))`` per data point (SPEC §7): ``[..., D]``
    (``[S, D]`` with replicas), differentiable in the encoder's parameters and ``prior_logits``."""
    from sbn_bench import model

    a = preactivation(net, params, 1, stochastic_input(net, params, x))
    return model.bernoulli_kl(noise, a, params["prior_logits"])  # type: ignore[arg-type]
