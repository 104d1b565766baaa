"""Real data: scikit-learn's bundled 8×8 handwritten digits (SPEC §7), with no download.

scikit-learn ships the UCI optical-recognition digits inside its wheel: 1 797 images of 8×8 pixels
with 17 grey levels (0–16) and their classes 0–9. Here the pixels are scaled to ``[0, 1]`` (divided
by 16) and split once, by a seeded permutation, into a training set of 1 438 images and a test set of
359 (⌊20 %⌋). Binarisation for the binary VAE:

* ``"fixed"``: a pixel is 1 where its scaled value is above ½;
* ``"dynamic"``: a fresh Bernoulli draw with the scaled value as its probability (the field's
  protocol on MNIST: a new draw each epoch in training; a problem takes one seeded draw).

scikit-learn is an optional dependency (the ``[data]`` extra): without it, a clear error names the
extra.

References:
    Alpaydin, Kaynak. "Optical Recognition of Handwritten Digits". UCI Machine Learning Repository,
    1998 (``sklearn.datasets.load_digits``). Dong, Mnih, Tucker. "DisARM". NeurIPS 2020 (dynamic
    binarisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sbn_bench.errors import ArgumentError, SbnBenchError, check_seed

SPLIT_SEED = 0
"""Seed of the one train/test permutation (fixed: every preset and run sees the same split)."""
TEST_FRACTION = 0.2
BINARISATIONS = ("fixed", "dynamic", "none")
SPLITS = ("train", "test", "all")


class MissingExtra(SbnBenchError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


@dataclass(frozen=True)
class Digits:
    """One split of the digits: ``x [N, 64]`` float64 pixels (scaled or binarised), ``labels [N]``
    int64 classes, and the image shape ``(1, 8, 8)``."""

    x: Tensor
    labels: Tensor
    split: str
    binarisation: str
    image_shape: tuple[int, int, int] = (1, 8, 8)


def _raw() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingExtra("the digits data need scikit-learn, which is not installed: "
                           "pip install 'sbn-bench[data]' (or pip install scikit-learn)") from None
    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float64) / 16.0
    return x, torch.as_tensor(d.target, dtype=torch.int64)


def split_indices(n: int) -> tuple[Tensor, Tensor]:
    """The train and test indices of the documented split (a permutation seeded with
    :data:`SPLIT_SEED`; the last ``⌊0.2 n⌋`` are the test set)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(n * TEST_FRACTION)
    return perm[: n - n_test], perm[n - n_test:]


def binarise(x: Tensor, binarisation: str, generator: torch.Generator | None = None) -> Tensor:
    """``fixed`` (``x > ½``), ``dynamic`` (a Bernoulli draw of ``x`` from ``generator``) or
    ``none`` (unchanged)."""
    if binarisation == "fixed":
        return (x > 0.5).to(x.dtype)
    if binarisation == "dynamic":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
        return (u < x).to(x.dtype)
    if binarisation == "none":
        return x
    raise ArgumentError(f"argument binarisation={binarisation!r} is unknown; expected one of "
                        f"{', '.join(BINARISATIONS)}", argument="binarisation", value=binarisation,
                        expected=", ".join(BINARISATIONS))


def load_digits(split: str = "train", binarisation: str = "none", seed: int = 0) -> Digits:
    """The digits of one split (module docstring), binarised as asked (``dynamic``: one draw seeded
    with ``seed``).

    Raises:
        MissingExtra: scikit-learn is not installed (``pip install 'sbn-bench[data]'``).
        ArgumentError: an unknown split or binarisation.
    """
    seed = check_seed(seed)
    if split not in SPLITS:
        raise ArgumentError(f"argument split={split!r} is unknown; expected one of "
                            f"{', '.join(SPLITS)}", argument="split", value=split,
                            expected=", ".join(SPLITS))
    if binarisation not in BINARISATIONS:
        binarise(torch.zeros(1), binarisation)  # raises, naming the argument
    x, labels = _raw()
    if split != "all":
        train, test = split_indices(x.shape[0])
        idx = train if split == "train" else test
        x, labels = x[idx], labels[idx]
    x = binarise(x, binarisation, torch.Generator().manual_seed(seed))
    return Digits(x, labels, split, binarisation)
