"""The built-in estimators (SPEC §3–4), one module per family, each factory returning a frozen
:class:`~sbn_bench.estimators.Estimator`.

=====================  ==================================================================
module                 estimators
=====================  ==================================================================
``exact``              ``exact``
``score_function``     ``reinforce``, ``reinforce-loo``
``control_variates``   ``muprop``, ``nvil``, ``rebar``, ``relax``, ``double-cv``
``local``              ``leg``
``antithetic``         ``arm``, ``disarm``, ``arms``
``relaxed``            ``concrete``, ``st-gumbel``, ``gr-mc``, ``tanh``, ``ap2``, ``local-reparam``
``straight_through``   ``st``, ``st-identity``, ``hard-st``, ``reinmax``
``psa``                ``psa``
=====================  ==================================================================

All are built from :mod:`sbn_bench.estimators.kernel` and vectorised over samples and data points
(Python loops run over layers only). They are registered through the entry-point group
``sbn_bench.estimators`` in ``pyproject.toml``, exactly like a third party's;
:data:`BUILTINS` is the same table, used when the package runs from a source tree without being
installed.
"""

from __future__ import annotations

from collections.abc import Callable

from sbn_bench.estimators.base import Estimator
from sbn_bench.estimators.builtin import (
    antithetic,
    control_variates,
    exact,
    local,
    psa,
    relaxed,
    score_function,
    straight_through,
)

FAMILY_MODULES = (exact, score_function, control_variates, local, antithetic, relaxed,
                  straight_through, psa)
"""One module per family, each with its ``ESTIMATORS`` table (name → factory)."""

BUILTINS: dict[str, Callable[..., Estimator]] = {
    name: factory for module in FAMILY_MODULES for name, factory in module.ESTIMATORS.items()}
"""Name → factory of every built-in, as registered in ``pyproject.toml``'s entry points (a test
checks that the two agree). A new built-in is a factory in its family's module and an entry in that
module's ``ESTIMATORS`` and in ``pyproject.toml``."""

__all__ = ["BUILTINS", "FAMILY_MODULES"]
