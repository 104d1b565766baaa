"""Networks beyond the paper's (SPEC §7): the architecture grammar, the exact reference on bodies,
heads, conv layers and the binary VAE (against naive enumeration and finite differences), the
analytic KL, PSA on conv layers, the estimators on these networks, problem files format v2."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbn_bench import model, network, problems
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.network import NetworkError, parse_network
from sbn_bench.problems import ProblemError, load_problem, random_problem, save_problem
from sbn_bench.reference import chain, exact_gradient, naive
from tests.oracles import path_expectation

REG = load_registry()
RTOL = 1e-10
"""Agreement required between two exact methods, entry by entry (as tests/test_reference.py)."""


def _grad(problem, fn):
    leaves = chain.leaf_params(problem)
    J = fn(problem, leaves)
    return float(J.detach()), dict(zip(leaves, torch.autograd.grad(J, list(leaves.values()))))


def _close(a: dict, b: dict, rtol: float, what: str) -> None:
    scale = max(float(v.abs().max()) for v in b.values())
    for k in b:
        err = float((a[k] - b[k]).abs().max())
        assert err <= rtol * scale + 1e-13 * scale, f"{what} {k}: error {err:.3g}"


# --------------------------------------------------------------------------------------------
# the grammar


@pytest.mark.parametrize("arch, widths, kinds, parts", [
    ("2-5-5-5-1", (2, 5, 5, 5, 1), ("dense",) * 3, set()),
    ("1x8x8-c8k3-c16k3s2-10", (64, 288, 64, 10), ("conv2d", "conv2d"), set()),
    ("64-d200:lrelu-d200:lrelu-200-d200:lrelu-d200:lrelu-64", (64, 200, 64), ("dense",),
     {"body", "head"}),
    ("1x4x4-dc2k2p1:relu-c3k2s2-d5:tanh-3", (16, 12, 3), ("conv2d",), {"body", "head"}),
    ("4-d3:lrelu0.1-2-d3:lrelum0.5-d2:lrelu1em05-1", (4, 2, 1), ("dense",), {"body", "head"}),
    ("3-c2k1-2", None, None, None),  # a conv layer needs an image input
])
def test_the_grammar_reads_back_what_it_writes(arch, widths, kinds, parts) -> None:
    if widths is None:
        with pytest.raises(NetworkError, match=r"needs a \[C, H, W\] input"):
            parse_network(arch)
        return
    net = parse_network(arch)
    assert net.widths == widths and net.layer_kinds == kinds and set(net.parts) == parts
    assert net.arch() == arch and parse_network(net.arch()) == net
    assert network.from_description(json.loads(json.dumps(net.describe()))) == net
    assert net.is_plain == (arch == "2-5-5-5-1")


@pytest.mark.parametrize("arch, words", [
    ("2-5", ["needs an input, at least one stochastic layer"]),
    ("2-x5-1", ["token 'x5' is not a layer"]),
    ("2-5:relu-1", ["a stochastic layer takes no activation"]),
    ("2-d4-1", ["no stochastic layer"]),
    ("2-3-d4-3-1", ["a stochastic layer after deterministic head layers"]),
    ("1x3x3-c2k5-1", ["do not fit an input of shape [1, 3, 3]"]),
    ("2-0-1", ["at least one unit"]),
    ("1x0x3-2-1", ["input shape must be positive"]),
    ("2-3-1x2", ["the last token '1x2' must be the output width"]),
    ("2-d3:tanh0.1-2-1", ["only lrelu takes a slope"]),
    ("2-3-d4:lrelu1e400-1", ["the slope 1e400 is not a finite number"]),  # it read as inf
])
def test_bad_architectures_name_the_token(arch, words) -> None:
    with pytest.raises(NetworkError) as e:
        parse_network(arch)
    assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(ProblemError):  # the same through the problem constructors
        random_problem(arch, 0)


def test_layer_lists_say_what_the_grammar_cannot() -> None:
    net = network.from_layers([4], [
        {"kind": "dense", "units": 3},
        {"kind": "leakyrelu", "slope": 0.1},
        {"kind": "dense", "units": 2, "stochastic": True},
        {"kind": "linear", "units": 1}])
    assert net.body[1].slope == 0.1 and net.widths == (4, 2, 1)
    assert net.arch() == "4-d3:lrelu0.1-2-1"  # not 4-d3:lrelu-2-1, the default slope 0.3's name
    with pytest.raises(NetworkError, match=r"layers\[1\]: kind 'sigmoid' is unknown"):
        network.from_layers([4], [{"kind": "dense", "units": 3, "stochastic": True},
                                  {"kind": "sigmoid"}, {"kind": "linear", "units": 1}])
    with pytest.raises(NetworkError, match=r"must be the output layer"):
        network.from_layers([4], [{"kind": "dense", "units": 3, "stochastic": True}])
    with pytest.raises(NetworkError, match="unknown keys"):
        network.from_layers([4], [{"kind": "dense", "units": 3, "stochastic": True, "size": 2},
                                  {"kind": "linear", "units": 1}])
    # a value of the wrong type is refused, not converted: JSON "false" read as True built a
    # stochastic layer, and a NaN slope failed later as an "overflowing" reference
    out = {"kind": "linear", "units": 1}
    cases = [({"kind": "dense", "units": 3, "stochastic": "false"}, r"\[0\]\.stochastic is 'false'"),
             ({"kind": "dense", "units": "3", "stochastic": True}, r"\[0\]\.units is '3'"),
             ({"kind": "dense", "units": 3.0, "stochastic": True}, r"units is 3\.0, expected a whole"),
             ({"kind": "leakyrelu", "slope": math.nan}, r"\[0\]\.slope is nan, expected a finite"),
             ({"kind": "conv2d", "channels": 2, "kernel": True}, r"kernel is True")]
    for bad, words in cases:
        with pytest.raises(NetworkError, match=words):
            network.from_layers([1, 4, 4] if bad["kind"] == "conv2d" else [4], [bad, out])
    with pytest.raises(NetworkError, match=r"\[1\]\.units is None"):
        network.from_layers([4], [{"kind": "dense", "units": 3, "stochastic": True},
                                  {"kind": "linear", "units": None}])
    assert network.from_layers([4], [{"kind": "dense", "units": np.int64(3), "stochastic": True},
                                     out]).widths == (4, 3, 1)  # numpy whole numbers are whole numbers
    # a key another kind takes was ignored, and "stochastic" on an activation or a linear layer
    # too (attacker review): each built a network other than the one written
    stoch = {"kind": "dense", "units": 3, "stochastic": True}
    for bad, words in [({"kind": "relu", "units": 4}, r"layers\[1\]: a 'relu' layer takes no 'units'"),
                       ({"kind": "tanh", "slope": 0.2}, r"a 'tanh' layer takes no 'slope'"),
                       ({"kind": "dense", "units": 2, "kernel": 3}, r"a 'dense' layer takes no 'kernel'"),
                       ({"kind": "tanh", "stochastic": True}, r"a 'tanh' layer cannot be stochastic")]:
        with pytest.raises(NetworkError, match=words):
            network.from_layers([4], [stoch, bad, out])
    for bad_out, words in [({**out, "slope": 0.1}, r"layers\[1\]: the output layer takes no 'slope'"),
                           ({**out, "stochastic": 0}, r"layers\[1\]\.stochastic is 0, expected true")]:
        with pytest.raises(NetworkError, match=words):  # the output layer's keys went unchecked
            network.from_layers([4], [stoch, bad_out])
    assert network.from_layers([4], [stoch, {"kind": "relu", "stochastic": False}, out]).widths == (4, 3, 1)
    # "linear" with "stochastic": true is a stochastic dense layer, as documented before
    assert network.from_layers([4], [{"kind": "linear", "units": 3, "stochastic": True}, out]) == \
        network.from_layers([4], [stoch, out])


def test_a_json_layer_list_file_is_an_arch(tmp_path) -> None:
    layers = [{"kind": "dense", "units": 3}, {"kind": "leakyrelu", "slope": 0.1},
              {"kind": "dense", "units": 2, "stochastic": True}, {"kind": "linear", "units": 1}]
    f = tmp_path / "net.json"
    f.write_text(json.dumps({"input": [4], "layers": layers}))
    p = random_problem(str(f), data_points=5, seed=0)
    assert p.network.body[1].slope == 0.1 and p.widths == (4, 2, 1)
    assert p.network == network.from_layers([4], layers)
    assert problems.parse_arch(str(f)) == (4, 2, 1)
    cases = [(tmp_path / "missing.json", None, "cannot read the layer list file"),
             (tmp_path / "a.json", "{not json", "is not JSON"),
             (tmp_path / "b.json", json.dumps({"input": [4]}), "exactly the keys 'input'"),
             (tmp_path / "c.json", json.dumps({"input": [4], "layers": layers[:1]}), "output"),
             # a layer is named by its index in "layers", and what a JSON file lacks is said in
             # JSON's terms (new-user review: "c.json[0].units", "plain integers or … tokens")
             (tmp_path / "d.json", json.dumps({"input": [4], "layers": [
                 {"kind": "dense", "units": "3"}, layers[-1]]}),
              r"d\.json: layers\[0\]\.units is '3', expected a whole number"),
             (tmp_path / "e.json", json.dumps({"input": [4], "layers": [layers[0], layers[-1]]}),
              r'e\.json: layers: no stochastic layer \(a layer with "stochastic": true\)'),
             (tmp_path / "f.json", json.dumps({"input": [4], "layers": [{"units": 3}, layers[-1]]}),
              r"f\.json: layers\[0\]: has no 'kind' \(expected one of dense, "),
             # json keeps the last of a repeated key silently
             (tmp_path / "g.json", '{"input": [4], "layers": [{"kind": "dense", "stochastic": true, '
                                   '"units": 3, "units": 5}, {"kind": "linear", "units": 1}]}',
              r"g\.json': the key 'units' given twice in one object")]
    for path, text, words in cases:
        if text is not None:
            path.write_text(text)
        with pytest.raises(ProblemError, match=words) as e:
            random_problem(str(path), data_points=5, seed=0)
        assert "arch" in str(e.value) or str(path) in str(e.value)


def test_a_tampered_description_is_refused() -> None:
    d = parse_network("1x4x4-c2k2-3").describe()
    d["stochastic"][0]["out"] = [2, 4, 4]  # not what a 2x2 kernel gives
    with pytest.raises(NetworkError, match=r"do not follow .*\(they differ in: stochastic\)"):
        network.from_description(d)
    with pytest.raises(NetworkError, match="format"):
        network.from_description({**d, "format": 99})
    good = parse_network("1x4x4-c2k2-3").describe()  # each said "do not follow" before
    with pytest.raises(NetworkError, match=r"unknown key\(s\) 'foo'; its keys: format, input"):
        network.from_description({**good, "foo": 1})
    inner = json.loads(json.dumps(good))
    inner["stochastic"][0]["bias"] = True
    with pytest.raises(NetworkError, match=r"unknown key\(s\) 'bias' \(of stochastic\[0\]\)"):
        network.from_description(inner)
    with pytest.raises(NetworkError, match="has no prior; its keys"):
        network.from_description({k: v for k, v in good.items() if k != "prior"})
    with pytest.raises(NetworkError, match="prior='no' must be true or false"):
        network.from_description({**good, "prior": "no"})
    assert network.from_description(good).describe() == good


# --------------------------------------------------------------------------------------------
# the exact reference = naive enumeration, finite differences


@st.composite
def small_networks(draw: st.DrawFn) -> problems.Problem:
    """Tiny networks with bodies, heads and conv layers (1×3×3 inputs, 1–2×2 kernels) and every
    loss, the binary VAE included (≤ 2^10 joint paths)."""
    kind = draw(st.sampled_from(["conv", "conv2", "body-head", "vae", "vae-deep", "conv-dense"]))
    act = draw(st.sampled_from(["relu", "lrelu", "tanh"]))
    if kind == "conv":
        arch, losses = f"1x3x3-c{draw(st.integers(1, 2))}k2-{draw(st.integers(2, 3))}", \
            ["softmax", "mse", "bernoulli"]
    elif kind == "conv2":
        arch, losses = f"1x3x3-c1k2-c{draw(st.integers(1, 2))}k2-2", ["softmax", "bernoulli"]
    elif kind == "body-head":
        arch, losses = f"3-d{draw(st.integers(1, 3))}:{act}-{draw(st.integers(1, 3))}-" \
                       f"d3:{act}-2", ["softmax", "mse", "bernoulli"]
    elif kind == "conv-dense":
        arch, losses = f"1x3x3-dc2k2:{act}-c1k2s1p1-2-2", ["softmax", "mse"]
    elif kind == "vae":
        n = draw(st.integers(2, 4))
        arch, losses = f"{n}-{draw(st.integers(1, 4))}-{n}", ["vae"]
    else:
        arch, losses = f"3-d3:{act}-{draw(st.integers(1, 3))}-d2:{act}-3", ["vae"]
    loss = draw(st.sampled_from(losses))
    p = random_problem(arch, draw(st.integers(0, 2**31 - 1)), data_points=draw(st.integers(1, 4)),
                       loss=loss, noise=draw(st.sampled_from(model.NOISE_NAMES)))
    scale = draw(st.sampled_from([0.5, 1.0, 3.0]))
    return p.with_params({k: v * scale for k, v in p.params.items()})


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(small_networks())
def test_chain_equals_naive_enumeration_on_networks(problem) -> None:
    J, g = _grad(problem, chain.objective)
    Jn, gn = _grad(problem, naive.objective)
    assert abs(J - Jn) <= RTOL * abs(Jn) + 1e-14, f"{problem.arch} {problem.loss}: {J} vs {Jn}"
    _close(g, gn, RTOL, f"{problem.arch} {problem.loss}/{problem.noise}")


@pytest.mark.parametrize("arch, loss", [("1x3x3-dc1k2:tanh-c2k2-d2:tanh-2", "softmax"),
                                        ("3-d3:lrelu-2-d3:lrelu-3", "vae")])
def test_exact_gradient_matches_finite_differences(arch, loss) -> None:
    p = random_problem(arch, 3, data_points=3, loss=loss)
    _, g = exact_gradient(p)
    h = 1e-6
    for name, v in p.params.items():
        for idx in [(0,) * v.dim(), tuple(s - 1 for s in v.shape)]:
            plus, minus = dict(p.params), dict(p.params)
            plus[name], minus[name] = v.clone(), v.clone()
            plus[name][idx] += h
            minus[name][idx] -= h
            fd = (float(chain.objective(p.with_params(plus))) -
                  float(chain.objective(p.with_params(minus)))) / (2 * h)
            assert fd == pytest.approx(float(g[name][idx]), rel=1e-6, abs=1e-8), f"{name}{idx}"


def test_the_data_points_are_chunked_with_the_same_result(monkeypatch) -> None:
    p = random_problem("4-d3:tanh-3-4", 1, data_points=7, loss="vae")
    J, g = exact_gradient(p)
    monkeypatch.setattr(chain, "CHUNK_BYTES", 1)  # one data point per chunk
    assert chain.data_chunk(p.widths, 7, "vae", (3,)) == 1
    J2, g2 = exact_gradient(p)
    assert J2 == pytest.approx(J, rel=1e-13)
    _close(g2, g, 1e-12, "chunked")


def test_the_size_guard_counts_the_vae_loss_table_once_per_state() -> None:
    # 16 latents, D = 1438 (digits-vae-exact): about 0.19e9 entries, within the limits
    cost = chain.check_shape((64, 16, 64), 1438, loss="vae")
    assert cost.states == 2**16 * 64 + 1438 * 2 * 2**16
    assert cost.bytes < 2 * 2**30
    with pytest.raises(chain.ReferenceTooLarge, match="table entries"):
        chain.check_shape((64, 200, 64), 1438, loss="vae")


# --------------------------------------------------------------------------------------------
# the binary VAE's KL


def test_the_analytic_kl_and_its_gradient_follow_the_formula() -> None:
    """SPEC §7's KL, written out with plain logs (moderate values), against model.bernoulli_kl;
    gradients by autograd through both."""
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(5, 4, generator=gen, dtype=torch.float64) * 6 - 3).requires_grad_()
    c = (torch.rand(4, generator=gen, dtype=torch.float64) * 4 - 2).requires_grad_()
    q, pc = torch.sigmoid(a), torch.sigmoid(c)
    formula = (q * torch.log(q / pc) + (1 - q) * torch.log((1 - q) / (1 - pc))).sum(-1)
    ours = model.bernoulli_kl(model.NOISES["logistic"], a, c)
    torch.testing.assert_close(ours, formula, rtol=1e-13, atol=1e-15)
    ga = torch.autograd.grad(formula.sum(), [a, c])
    gb = torch.autograd.grad(ours.sum(), [a, c])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)
    # saturated units stay finite (log space)
    big = model.bernoulli_kl(model.NOISES["logistic"], torch.tensor([[800.0, -800.0]]),
                             torch.zeros(2))
    assert torch.isfinite(big).all() and float(big) == pytest.approx(2 * math.log(2))


def test_the_vae_objective_is_the_negative_elbo_by_enumeration() -> None:
    """J = mean over data of Σ_z q(z|x)[−log p(x|z)] + KL(q ‖ p): the chain (analytic KL) equals the
    naive enumeration in which the KL is E_q[log q − log p] summed over every z."""
    p = random_problem("5-3-5", 4, data_points=4, loss="vae")
    assert abs(float(chain.objective(p)) - float(naive.objective(p))) < 1e-12


def test_the_kl_is_exact_in_every_estimate_and_sampled_kl_estimates_the_same_gradient() -> None:
    analytic = random_problem("4-3-4", 6, data_points=3, loss="vae")
    sampled = dataclasses.replace(analytic, kl="sampled")
    assert analytic.fingerprint() != sampled.fingerprint()
    _, g = exact_gradient(analytic)
    _, g2 = exact_gradient(sampled)
    _close(g2, g, 1e-14, "same J")
    for kl_problem in (analytic, sampled):  # REINFORCE is unbiased either way (by enumeration)
        mean = path_expectation(REG.create("reinforce"), kl_problem)
        _close(mean, g, 1e-10, f"reinforce {kl_problem.kl}")
    # the prior's logits get the KL's exact gradient in every sample (analytic)
    est = estimate(REG.create("st"), analytic, 4, torch.Generator().manual_seed(0))
    assert torch.allclose(est["prior_logits"], g["prior_logits"].expand(4, -1), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# estimators on the new networks


UNBIASED_NETS = [("1x3x3-c2k2-2", "softmax"), ("3-d3:tanh-2-d3:relu-2", "bernoulli"),
                 ("1x3x3-c1k2-c2k2-2", "mse"), ("4-d3:lrelu-3-d3:lrelu-4", "vae")]


@pytest.mark.parametrize("arch, loss", UNBIASED_NETS)
def test_unbiased_path_estimators_are_exactly_unbiased_on_networks(arch, loss) -> None:
    p = random_problem(arch, 8, data_points=2, loss=loss)
    _, g = exact_gradient(p)
    mean = path_expectation(REG.create("reinforce"), p)
    _close(mean, g, 1e-10, f"reinforce on {arch}")


@pytest.mark.parametrize("arch, loss", UNBIASED_NETS)
def test_psa_is_exact_for_the_last_layer_and_the_head(arch, loss) -> None:
    """SPEC §4: PSA's expectation is the gradient for the last stochastic layer and the output
    (head) parameters, on conv layers and deep heads too; biased in earlier layers."""
    p = random_problem(arch, 9, data_points=2, loss=loss)
    _, g = exact_gradient(p)
    mean = path_expectation(REG.create("psa"), p)
    L = p.n_layers
    exact_names = [f"weight_{L}", f"bias_{L}", "weight_out", "bias_out",
                   *[n for n in g if n.startswith("head_")]]
    _close({k: mean[k] for k in exact_names}, {k: g[k] for k in exact_names}, 1e-10, "psa")
    if L > 1:
        assert float((mean["weight_1"] - g["weight_1"]).norm()) > 1e-8 * float(g["weight_1"].norm())


@pytest.mark.parametrize("arch, loss, kl", [("4-d3:lrelu-3-d3:lrelu-4", "vae", "analytic"),
                                          ("4-5-4", "vae", "sampled"),
                                          ("3-d3:tanh-2-4-d3:relu-2", "bernoulli", "analytic")])
def test_psa_in_blocks_of_flips_is_psa(arch, loss, kl, monkeypatch) -> None:
    """A deep head's flips evaluated in blocks (FLIP_BLOCK, each recomputed in the backward
    pass) give PSA's estimate to round-off, and its expectation stays exact for the last layer
    and the head."""
    from sbn_bench.estimators import estimate
    from sbn_bench.estimators.builtin import psa as psa_module

    p = random_problem(arch, 11, data_points=3, loss=loss)
    if kl == "sampled":
        p = dataclasses.replace(p, kl="sampled")
    whole = estimate(REG.create("psa"), p, 7, torch.Generator().manual_seed(2))
    monkeypatch.setattr(psa_module, "FLIP_BLOCK", 2)  # blocks of 2, 2, …, 1 flips
    assert p.widths[-2] > 2
    blocked = estimate(REG.create("psa"), p, 7, torch.Generator().manual_seed(2))
    _close(blocked, whole, 1e-12, f"psa in blocks on {arch}")
    _, g = exact_gradient(p)
    mean = path_expectation(REG.create("psa"), p)
    exact_names = [f"weight_{p.n_layers}", f"bias_{p.n_layers}", "weight_out", "bias_out",
                   *[n for n in g if n.startswith("head_")]]
    _close({k: mean[k] for k in exact_names}, {k: g[k] for k in exact_names}, 1e-10, "psa")


def _conv_as_dense(p: problems.Problem) -> problems.Problem:
    """The same network with every conv2d stochastic layer written as a dense layer (its
    matrix: each output unit's weights over the flat input)."""
    net = p.net
    params = dict(p.params)
    layers = []
    for layer in net.stochastic:
        if layer.kind == "conv2d":
            eye = torch.eye(layer.n_in, dtype=torch.float64).reshape(layer.n_in, *layer.in_shape)
            cols = torch.nn.functional.conv2d(eye, params[layer.weight], None, layer.stride,
                                              layer.padding).reshape(layer.n_in, -1)
            params[layer.weight] = cols.T.contiguous()
            params[layer.bias] = params[layer.bias].repeat_interleave(layer.out_shape[1]
                                                                      * layer.out_shape[2])
            layer = network.Layer("dense", (layer.n_in,), (layer.n_out,), layer.weight, layer.bias)
        layers.append(layer)
    head = tuple(h for h in net.head if h.kind != "flatten")
    head = tuple(dataclasses.replace(h, in_shape=(h.n_in,)) for h in head)
    dense = network.Network((net.widths[0],), (), tuple(layers), head)
    return problems.Problem(params, p.x, p.y, loss=p.loss, name="dense",
                            network=None if dense.is_plain else dense)


@pytest.mark.parametrize("arch", ["1x3x3-c2k2-c1k2-2", "1x4x4-c2k2s2p1-c2k2-3"])
def test_psa_on_a_conv_layer_equals_psa_on_the_same_layer_written_dense(arch) -> None:
    p = random_problem(arch, 10, data_points=3, loss="softmax")
    d = _conv_as_dense(p)
    assert abs(float(chain.objective(p)) - float(chain.objective(d))) < 1e-12
    states, _ = model.sample_states(d.params, d.x, d.noise_dist, 5, torch.Generator().manual_seed(1))
    from sbn_bench.estimators import estimate_on_paths

    a = estimate_on_paths(REG.create("psa"), p, states)
    b = estimate_on_paths(REG.create("psa"), d, states)
    torch.testing.assert_close(a["weight_out"], b["weight_out"], rtol=1e-12, atol=1e-14)
    for layer in p.net.stochastic:  # the conv weight's gradient = the dense one gathered back
        dense_grad = b[layer.weight]  # [S, n_out, n_in]
        eye = torch.eye(layer.n_in, dtype=torch.float64).reshape(layer.n_in, *layer.in_shape)
        w = torch.zeros(layer.weight_shape, dtype=torch.float64, requires_grad=True)
        cols = torch.nn.functional.conv2d(eye, w, None, layer.stride, layer.padding)
        cols = cols.reshape(layer.n_in, -1).T  # [n_out, n_in], linear in w
        for s in range(5):
            (gw,) = torch.autograd.grad((cols * dense_grad[s]).sum(), [w], retain_graph=True)
            torch.testing.assert_close(a[layer.weight][s], gw, rtol=1e-10, atol=1e-13)


def test_every_builtin_runs_on_what_it_declares_and_refuses_the_rest() -> None:
    nets = [random_problem(a, 1, data_points=2, loss=loss) for a, loss in UNBIASED_NETS]
    for name in REG.names():
        est = REG.create(name)
        for p in nets:
            if est.supports(p):
                g = estimate(est, p, 3, torch.Generator().manual_seed(0))
                assert all(torch.isfinite(v).all() for v in g.values()), (name, p.arch)
                assert list(g) == p.param_names
            else:
                why = est.unsupported(p)
                assert why is not None and repr(est.spec) in str(why)


def test_a_plugin_estimator_is_refused_a_conv_network_by_default() -> None:
    from sbn_bench.estimators import Estimator, UnsupportedProblem

    plugin = Estimator("old", REG.create("st").surrogate, randomness="continuous")
    p = random_problem("1x3x3-c1k2-2", 0, data_points=2, loss="softmax")
    with pytest.raises(UnsupportedProblem, match="does not support layer 'conv2d'"):
        estimate(plugin, p, 2, torch.Generator())


# --------------------------------------------------------------------------------------------
# problem files, format v2


@pytest.mark.parametrize("arch, loss, kl", [("1x4x4-dc2k2:relu-c2k2s2-d3:tanh-3", "softmax",
                                             "analytic"),
                                            ("4-d3:lrelu-3-4", "vae", "sampled"),
                                            ("2-3-1", "logistic", "analytic")])
def test_v2_files_round_trip(tmp_path, arch, loss, kl) -> None:
    p = random_problem(arch, 2, data_points=3, loss=loss, kl=kl)
    path = save_problem(p, tmp_path / "p.npz")
    q = load_problem(path)
    assert q.fingerprint() == p.fingerprint() and q.net == p.net and q.kl == p.kl
    with np.load(path) as z:
        assert str(z["format"]) == "2" and json.loads(str(z["network"])) == p.net.describe()


def _rewrite(path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(path, **arrays)


@pytest.mark.parametrize("changes, words", [
    ({"format": np.array("3")}, ["'format'", "expected '1' or '2'"]),
    ({"network": np.array("{not json")}, ["'network'", "not valid JSON"]),
    ({"network": np.array(json.dumps({"format": 1}))}, ["malformed network description"]),
    ({"weight_1": np.zeros((2, 1, 3, 3))}, ["'weight_1'", "expected [2, 1, 2, 2]"]),
    ({"body_weight_1": None}, ["'body_weight_1'", "is missing"]),
    ({"kl": np.array("guess")}, ["'kl'", "expected one of analytic, sampled"]),
])
def test_malformed_v2_files_are_refused_naming_the_array(tmp_path, changes, words) -> None:
    p = random_problem("1x3x3-dc1k2:relu-c2k2-2", 0, data_points=2, loss="softmax")
    path = save_problem(p, tmp_path / "p.npz")
    _rewrite(path, **changes)
    with pytest.raises(ProblemError) as e:
        load_problem(path)
    assert all(w in str(e.value) for w in words), str(e.value)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_fuzzed_network_descriptions_are_refused_cleanly(tmp_path_factory, data) -> None:
    """Any mutation of a description either loads to a consistent problem or is a ProblemError
    (never another exception)."""
    p = random_problem("1x3x3-dc1k2:tanh-c2k2-d2:relu-2", 0, data_points=2, loss="softmax")
    d = p.net.describe()
    part = data.draw(st.sampled_from(["body", "stochastic", "head"]))
    if d[part]:
        i = data.draw(st.integers(0, len(d[part]) - 1))
        key = data.draw(st.sampled_from(["kind", "in", "out", "kernel", "stride", "padding"]))
        d[part][i][key] = data.draw(st.one_of(st.integers(-2, 5), st.text(max_size=3),
                                              st.lists(st.integers(0, 4), max_size=4), st.none()))
    path = save_problem(p, tmp_path_factory.mktemp("f") / "p.npz")
    _rewrite(path, network=np.array(json.dumps(d)))
    try:
        q = load_problem(path)
    except ProblemError:
        return
    assert q.net.describe() == d


def test_the_digits_without_scikit_learn_name_the_extra(monkeypatch) -> None:
    """Without the [data] extra the digits presets stop with one line naming it (CLI exit 1)."""
    import sys

    from click.testing import CliRunner

    from sbn_bench import data
    from sbn_bench.cli import main

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn → ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(data.MissingExtra, match=r"sbn-bench\[data\]"):
        data.load_digits("train")
    res = CliRunner().invoke(main, ["exact", "--preset", "digits-vae-exact"])
    assert res.exit_code != 0 and "sbn-bench[data]" in res.output, res.output
    assert "Traceback" not in res.output
