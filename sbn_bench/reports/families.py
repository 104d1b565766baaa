"""Estimator families in a report: which family each estimator of a run belongs to, and how a long
list of estimators is cut into panels of whole families.

A run's manifest records each estimator's family (``estimators: [{spec, name, family, …}]``, from
:attr:`sbn_bench.estimators.Estimator.family`); runs written before that field existed fall back
to :data:`NAME_FAMILIES`, a map from registry name to family. An estimator found in neither is in
the family :data:`OTHER`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

OTHER = "other"

NAME_FAMILIES: dict[str, str] = {
    "exact": "exact",
    "reinforce": "score-function", "reinforce-loo": "score-function",
    "nvil": "control-variates", "muprop": "control-variates", "double-cv": "control-variates",
    "rebar": "control-variates", "relax": "control-variates",
    "arm": "antithetic", "disarm": "antithetic", "arms": "antithetic",
    "concrete": "relaxed", "tanh": "relaxed", "ap2": "relaxed", "local-reparam": "relaxed",
    "st-gumbel": "relaxed", "gr-mc": "relaxed",
    "st": "straight-through", "st-identity": "straight-through", "reinmax": "straight-through",
    "hard-st": "straight-through",
    "psa": "psa",
    "leg": "local-expectation",
}
"""Registry name → family, for runs whose manifest does not record families (the manifest wins
whenever it does); for the built-ins it agrees with the registry (a test checks it)."""


UNRANKED_FAMILIES = frozenset({"exact"})
"""Families never called best: the ``exact`` estimator is the reference itself (zero error by
construction); its rows are shown but not ranked."""


def ranked(estimator: str, families: Mapping[str, str]) -> bool:
    """Whether ``estimator`` takes part in "best" and "tie" marks (not in :data:`UNRANKED_FAMILIES`)."""
    return families.get(estimator, OTHER) not in UNRANKED_FAMILIES


def name_of(spec: str) -> str:
    """The registry name of an estimator spec: ``"concrete:tau=0.1"`` → ``"concrete"``."""
    return str(spec).split(":", 1)[0]


def families_from_manifest(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{spec: family}`` for the estimators whose manifest entry names a family."""
    out: dict[str, str] = {}
    block = manifest.get("estimators")
    if isinstance(block, list):
        for rec in block:
            if isinstance(rec, dict):
                spec = rec.get("spec") or rec.get("name")
                fam = rec.get("family")
                if spec and isinstance(fam, str) and fam:
                    out[str(spec)] = fam
    return out


def estimator_families(estimators: Sequence[str], manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{spec: family}`` for every estimator: the manifest's family, else :data:`NAME_FAMILIES`,
    else :data:`OTHER`."""
    recorded = families_from_manifest(manifest)
    return {e: recorded.get(e) or NAME_FAMILIES.get(name_of(e), OTHER) for e in estimators}


def family_order(estimators: Sequence[str], families: Mapping[str, str]) -> list[str]:
    """The families in order of their first estimator."""
    return list(dict.fromkeys(families.get(e, OTHER) for e in estimators))


def by_family(estimators: Sequence[str], families: Mapping[str, str]) -> list[str]:
    """``estimators`` regrouped family by family (families in order of first appearance, the run's
    order within each)."""
    order = family_order(estimators, families)
    return [e for fam in order for e in estimators if families.get(e, OTHER) == fam]


def panel_groups(estimators: Sequence[str], families: Mapping[str, str],
                 max_per_panel: int = 12) -> list[list[str]]:
    """Cut ``estimators`` into panels of at most ``max_per_panel`` lines, whole families together
    (a family larger than a panel is split): one panel when they all fit."""
    if len(estimators) <= max_per_panel:
        return [list(by_family(estimators, families))]
    groups: list[list[str]] = []
    current: list[str] = []
    for fam in family_order(estimators, families):
        members = [e for e in estimators if families.get(e, OTHER) == fam]
        while len(members) > max_per_panel:
            if current:
                groups.append(current)
                current = []
            groups.append(members[:max_per_panel])
            members = members[max_per_panel:]
        if len(current) + len(members) > max_per_panel:
            groups.append(current)
            current = []
        current += members
    if current:
        groups.append(current)
    return groups
