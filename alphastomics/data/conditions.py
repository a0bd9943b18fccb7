"""What a model can be conditioned on: per-cell labels (cell type) and per-slice covariates
(platform, region, condition, time point), as integer codes. Code 0 is "no condition": unknown
labels, values the training data never had, and the condition dropout of training, so that one
model serves conditional and unconditional sampling (classifier-free guidance)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from alphastomics.errors import InputError

NONE = 0
log = logging.getLogger(__name__)


@dataclass
class ConditionVocabulary:
    cell_types: list[str] = field(default_factory=list)  # empty: not conditioned on cell type
    covariates: dict[str, list[str]] = field(default_factory=dict)  # key -> values, in code order 1..
    # fraction of the training cells of each type (cell_types order): a joint sample draws its
    # cells' types from it before the tissue (empty in checkpoints from before it was recorded)
    cell_type_fractions: list[float] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.cell_types) or bool(self.covariates)

    @property
    def sizes(self) -> tuple[int, list[int]]:
        """(cell-type codes incl. 0, [codes incl. 0 per covariate]) for the network's embeddings."""
        return (len(self.cell_types) + 1 if self.cell_types else 0), [len(v) + 1 for v in self.covariates.values()]

    @classmethod
    def fit(cls, slices, cell_type: bool, covariate_keys: list[str]) -> "ConditionVocabulary":
        counts: dict[str, int] = {}
        if cell_type:
            for s in slices:
                if s.cell_types is not None:
                    for t in s.cell_types:
                        if t is not None and str(t) not in ("", "None", "nan"):
                            counts[str(t)] = counts.get(str(t), 0) + 1
        types = set(counts)
        if cell_type and not types:
            # one config serves several datasets: those without cell types train unconditioned
            log.warning("model.condition_on_cell_type is set, but no training slice has cell types: "
                        "this model is not conditioned on cell type")
        covariates = {}
        for key in covariate_keys:
            values = sorted({s.covariates[key] for s in slices if key in s.covariates})
            if not values:
                raise InputError(f"model.slice_covariates names {key!r}, but no training slice records it "
                                 "(preprocess with --slice-covariates / the platform's slice_covariates)")
            covariates[key] = values
        total = sum(counts.values())
        return cls(sorted(types), covariates, [counts[t] / total for t in sorted(types)] if total else [])

    def cell_codes(self, cell_types, n: int) -> np.ndarray:
        """(n,) codes of per-cell labels (0 for unknown or unseen types, or when not conditioned)."""
        if not self.cell_types or cell_types is None:
            return np.zeros(n, dtype=np.int64)
        code = {t: i + 1 for i, t in enumerate(self.cell_types)}
        return np.array([code.get(str(t), NONE) if t is not None else NONE for t in cell_types], dtype=np.int64)

    def covariate_codes(self, covariates: dict[str, str]) -> np.ndarray:
        """(K,) codes of a slice's covariates (0 where the slice lacks the key or has an unseen value)."""
        return np.array([{v: i + 1 for i, v in enumerate(values)}.get(covariates.get(key), NONE)
                         for key, values in self.covariates.items()], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"cell_types": list(self.cell_types), "covariates": {k: list(v) for k, v in self.covariates.items()},
                "cell_type_fractions": [float(f) for f in self.cell_type_fractions]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "ConditionVocabulary":
        d = d or {}
        return cls(list(d.get("cell_types", [])), {k: list(v) for k, v in (d.get("covariates") or {}).items()},
                   [float(f) for f in d.get("cell_type_fractions", [])])

    def draw_cell_types(self, n: int, seed: int) -> list[str] | None:
        """``n`` cell types in the training composition, assigned to the cells at random (seeded);
        None where the composition is unknown.

        The counts are the training fractions times ``n``, rounded by largest remainder, not ``n``
        independent draws: independent draws add multinomial noise to the composition that no real
        tissue asked for, and the drawn composition lands further from the test slice than the
        training composition itself (docs/findings/conditions.md)."""
        if not self.cell_types or len(self.cell_type_fractions) != len(self.cell_types):
            return None
        fractions = np.asarray(self.cell_type_fractions, dtype=np.float64)
        share = fractions / fractions.sum() * n
        counts = np.floor(share).astype(np.int64)
        counts[np.argsort(counts - share, kind="stable")[: n - counts.sum()]] += 1
        codes = np.repeat(np.arange(len(self.cell_types)), counts)
        np.random.default_rng(seed).shuffle(codes)
        return [self.cell_types[i] for i in codes]
