"""Conformance tests of the example plugin, as its author would keep them in their own test suite:
the same table every sbn-bench built-in passes (``python -m pytest examples/``)."""

from reinforce_baseline import reinforce_baseline

from sbn_bench.estimators.testing import parametrize_with_checks


@parametrize_with_checks([reinforce_baseline(), reinforce_baseline(baseline=-2.0)])
def test_conformance(estimator, check):
    check(estimator)
