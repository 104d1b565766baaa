"""A plugin file in which most factories break the contract: the registry must record each one in
``Registry.errors`` by name and origin, and still load ``fine-one`` and everything else."""

from __future__ import annotations

import torch

from sbn_bench.estimators import Estimator


def _zero_surrogate(problem, params, generator):
    return sum(p.flatten(1).sum(1) for p in params.values()) * 0.0


def fine_one() -> Estimator:
    """The one valid factory of this file."""
    return Estimator("fine-one", _zero_surrogate, randomness="none", description="zero gradient")


def positional(tau):  # hyperparameters must be keyword-only with defaults
    return Estimator("positional", _zero_surrogate, randomness="none")


def no_default(*, tau):  # keyword-only, but no default
    return Estimator("no-default", _zero_surrogate, randomness="none")


def wrong_type() -> dict:
    return {"name": "wrong-type"}


def wrong_name() -> Estimator:
    return Estimator("not-the-registered-name", _zero_surrogate, randomness="none")


def raises() -> Estimator:
    raise RuntimeError("this factory always fails")


def psa_clone() -> Estimator:
    return Estimator("psa", _zero_surrogate, randomness="none")


def bad_randomness() -> Estimator:
    return Estimator("bad-randomness", _zero_surrogate, randomness="sometimes")  # type: ignore[arg-type]


ESTIMATORS = {
    "fine-one": fine_one,
    "positional": positional,
    "no-default": no_default,
    "wrong-type": wrong_type,
    "wrong-name": wrong_name,
    "raises": raises,
    "bad-randomness": bad_randomness,
    "not-callable": torch.zeros(3),
    "psa": psa_clone,  # clashes with the built-in entry point: must be refused, the built-in kept
}
