"""Which genes the ``impute`` mode hides: one seeded choice, shared by every method, so that all of
them are scored on the same held-out genes of a slice."""

from __future__ import annotations

import numpy as np

from alphastomics.errors import InputError


def heldout_genes(measured: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded random ``fraction`` of the measured genes (at least one, never all), in panel order.

    The choice depends only on the set of measured gene names, the fraction and the seed.
    """
    if not 0 < fraction < 1:
        raise InputError(f"held-out gene fraction must be between 0 and 1, got {fraction}")
    names = sorted(set(measured))
    if len(names) < 2:
        raise InputError(f"cannot hold genes out of a panel of {len(names)} gene(s)")
    count = min(max(1, int(round(fraction * len(names)))), len(names) - 1)
    chosen = set(np.random.default_rng(seed).choice(names, size=count, replace=False).tolist())
    return [g for g in measured if g in chosen]
