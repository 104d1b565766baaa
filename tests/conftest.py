"""Shared problem fixtures. Keep this file small and generic: test-specific helpers live in the tests."""

from __future__ import annotations

import pytest

from sbn_bench.problems import Problem, paper_problem, random_problem


@pytest.fixture(scope="session")
def paper() -> Problem:
    """The paper's problem (SPEC §6): 2-5-5-5-1, 200 points, logistic noise and loss, seed 0."""
    return paper_problem(0)


@pytest.fixture(scope="session")
def tiny() -> Problem:
    """A small random problem, 2-3-2-1 with 5 data points: cheap enough for naive enumeration."""
    return random_problem("2-3-2-1", 1, data_points=5)
