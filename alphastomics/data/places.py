"""A section's place in a registered atlas: where it lies along the cutting axis.

In a ``shared`` frame with a cutting axis (``section_axis`` of the dataset), every section carries
its place: the extent of its cells along that axis (a slab of a volume, LOW:HIGH), or a single
value (a plane at z, a section at a bregma: LOW = HIGH). The model is trained on each section's
cells with the coordinate along the axis measured from the section's place (alphastomics.data.frames)
and is shown the place itself; a section is generated at the place asked for, where no training
section had to lie (a gap between two measured sections, a section never cut).

A section without a place (dissociated cells to lay out, ``expr_to_pos``) gets one estimated from
its expression: a ridge regression from the standardised genes to the coordinate along the axis,
fitted on the training cells, gives each cell's estimate; their median is the section's centre, and
the estimate's uncertainty is the error of the same estimate on each training section left out of
the fit in turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from alphastomics.errors import InputError

log = logging.getLogger(__name__)

AXES = ("x", "y", "z")
# cells per training section behind the estimator (a section's median needs few; bounds the fit at atlas scale)
ESTIMATOR_CELLS_PER_SECTION = 5000
RIDGE_PENALTY = 1.0


@dataclass(frozen=True)
class Place:
    """A section's extent along the cutting axis, in source units (low == high: a plane)."""

    low: float
    high: float

    @property
    def centre(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    @classmethod
    def parse(cls, text: str, what: str = "--section-at") -> "Place":
        """``VALUE`` (a plane) or ``LOW:HIGH`` (a slab)."""
        parts = str(text).split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or not all(np.isfinite(values)):
            raise InputError(f"{what} {text!r}: give a place along the cutting axis as VALUE or LOW:HIGH")
        low, high = values[0], values[-1]
        if high < low:
            raise InputError(f"{what} {text!r}: LOW is above HIGH")
        return cls(low, high)

    def __str__(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g}:{self.high:g}"

    def to_dict(self) -> dict:
        return {"low": float(self.low), "high": float(self.high)}


def axis_index(name: str) -> int:
    if name not in AXES:
        raise InputError(f"section_axis {name!r}: one of {', '.join(AXES)}")
    return AXES.index(name)


def section_extent(coords: np.ndarray, axis: int) -> Place:
    """A section's place from its own cells: their extent along ``axis``."""
    along = np.asarray(coords, dtype=np.float64)[:, axis]
    return Place(float(along.min()), float(along.max()))


def place_from_values(values, what: str) -> Place:
    """A section's place from per-cell values (an obs column): their range; a plane where they agree."""
    numbers = np.asarray(values, dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if numbers.size == 0:
        raise InputError(f"{what}: no numeric value to place the section by")
    return Place(float(numbers.min()), float(numbers.max()))


@dataclass
class SectionPlaces:
    """The cutting axis, the training sections' places, and the estimator of a place from expression."""

    axis: int
    training: dict[str, list[float]] = field(default_factory=dict)  # slice id -> [low, high]
    # ridge regression of the coordinate along the axis on standardised genes (manifest order; 0 for unused genes)
    gene_mean: list[float] = field(default_factory=list)
    gene_scale: list[float] = field(default_factory=list)
    coefficients: list[float] = field(default_factory=list)
    intercept: float = 0.0
    estimate_error: float | None = None  # RMS error of the centre estimate, each training section left out in turn

    @property
    def axis_name(self) -> str:
        return AXES[self.axis]

    @property
    def sections(self) -> list[Place]:
        return [Place(lo, hi) for lo, hi in self.training.values()]

    @property
    def typical_half_width(self) -> float:
        return float(np.mean([p.half_width for p in self.sections])) if self.training else 0.0

    @property
    def origin(self) -> float:
        """The mean of the training sections' centres: where the model's absolute coordinate along the axis is 0."""
        return float(np.mean([p.centre for p in self.sections])) if self.training else 0.0

    def span(self) -> tuple[float, float]:
        """The lowest and highest training section centres: a place between them is interpolated."""
        centres = [p.centre for p in self.sections]
        return min(centres), max(centres)

    def thickness_factor(self, place: Place) -> float:
        """Units along the axis per unit of the section's own thickness: every section as thick as the
        typical training section (1 for a plane)."""
        typical = self.typical_half_width
        return typical / place.half_width if place.half_width > 0 and typical > 0 else 1.0

    def outside_training(self, place: Place) -> bool:
        low, high = self.span()
        return not low <= place.centre <= high

    @classmethod
    def fit(cls, axis: int, slices) -> "SectionPlaces":
        """``slices``: the training SliceData; their places are their extents along ``axis``."""
        training = {s.slice_id: list(section_extent(s.coords, axis).to_dict().values()) for s in slices}
        places = cls(axis, training)
        usable = np.logical_and.reduce([s.gene_mask.astype(bool) for s in slices])
        if not usable.any():
            return places
        rng = np.random.default_rng(0)
        picks = [rng.permutation(len(s.cell_ids))[:ESTIMATOR_CELLS_PER_SECTION] for s in slices]
        features = [s.expression[p][:, usable].astype(np.float64) for s, p in zip(slices, picks)]
        targets = [s.coords[p, axis].astype(np.float64) for s, p in zip(slices, picks)]
        mean, scale, coef, intercept = _ridge(np.concatenate(features), np.concatenate(targets))
        G = len(slices[0].gene_mask)
        places.gene_mean, places.gene_scale, places.coefficients = (
            _scatter(v, usable, G, fill) for v, fill in ((mean, 0.0), (scale, 1.0), (coef, 0.0)))
        places.intercept = intercept
        if len(slices) >= 3:  # left out in turn, at least two sections remain to fit on
            errors = []
            for k, s in enumerate(slices):
                rest = [i for i in range(len(slices)) if i != k]
                m, sc, c, b = _ridge(np.concatenate([features[i] for i in rest]), np.concatenate([targets[i] for i in rest]))
                centre = float(np.median(((features[k] - m) / sc) @ c + b))
                errors.append(centre - section_extent(s.coords, axis).centre)
            places.estimate_error = float(np.sqrt(np.mean(np.square(errors))))
        return places

    def estimate(self, expression: np.ndarray, gene_mask: np.ndarray) -> tuple[Place, np.ndarray]:
        """The place of a section from its cells' expression (N, G): centred on the median of the cells'
        estimates, as thick as the training sections on average; and the cells' estimates (N,).
        Genes the section did not measure count at the training mean."""
        if not self.coefficients:
            raise InputError("this model holds no estimator of a section's place (no gene was measured in every "
                             "training section): give the place with --section-at")
        mean, scale, coef = (np.asarray(v, dtype=np.float64) for v in (self.gene_mean, self.gene_scale, self.coefficients))
        coef = np.where(np.asarray(gene_mask, dtype=bool), coef, 0.0)
        per_cell = ((np.asarray(expression, dtype=np.float64) - mean) / scale) @ coef + self.intercept
        centre = float(np.median(per_cell))
        half = self.typical_half_width
        return Place(centre - half, centre + half), per_cell

    def to_dict(self) -> dict:
        return {"axis": self.axis, "training": {k: list(v) for k, v in self.training.items()}, "gene_mean": self.gene_mean,
                "gene_scale": self.gene_scale, "coefficients": self.coefficients, "intercept": self.intercept,
                "estimate_error": self.estimate_error}

    @classmethod
    def from_dict(cls, d: dict | None) -> "SectionPlaces | None":
        if not d:
            return None
        return cls(int(d["axis"]), {k: [float(a), float(b)] for k, (a, b) in d.get("training", {}).items()},
                   [float(v) for v in d.get("gene_mean", [])], [float(v) for v in d.get("gene_scale", [])],
                   [float(v) for v in d.get("coefficients", [])], float(d.get("intercept", 0.0)),
                   None if d.get("estimate_error") is None else float(d["estimate_error"]))


def _ridge(features: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coefficients, intercept) of a ridge regression on standardised features."""
    from sklearn.linear_model import Ridge

    mean = features.mean(0)
    scale = features.std(0)
    scale[scale == 0] = 1.0
    fit = Ridge(alpha=RIDGE_PENALTY).fit((features - mean) / scale, target)
    return mean, scale, fit.coef_, float(fit.intercept_)


def _scatter(values: np.ndarray, used: np.ndarray, size: int, fill: float) -> list[float]:
    """Values of the used genes at their places in the manifest's gene order, ``fill`` elsewhere."""
    out = np.full(size, fill)
    out[used] = values
    return [float(v) for v in out]


def resolve_place(places: SectionPlaces, expression: np.ndarray, gene_mask: np.ndarray, coords: np.ndarray | None,
                  mode: str, requested: Place | None, what: str) -> tuple[Place, dict]:
    """The place to sample a section at, and the record of it for ``uns``.

    ``requested`` (--section-at, an obs column) wins; ``expr_to_pos`` without one estimates the place
    from expression (the section's own coordinates are what it generates); the other modes take the
    extent of the given coordinates. Where true coordinates exist, the record holds the estimate's
    error. A place beyond the training sections' centres is extrapolated: logged and recorded."""
    true_place = None if coords is None else section_extent(coords, places.axis)
    record: dict = {"axis": places.axis_name}
    if requested is not None:
        place, record["source"] = requested, "given"
    elif mode == "expr_to_pos":
        place, per_cell = places.estimate(expression, gene_mask)
        record["source"] = "estimated from expression"
        record["cell_estimates_iqr"] = [float(v) for v in np.percentile(per_cell, [25, 75])]
        if places.estimate_error is not None:
            record["estimate_error_rms"] = places.estimate_error
            if places.estimate_error > 2 * places.typical_half_width:
                log.warning(
                    "%s: the place estimated from expression is uncertain: on the training sections, each left out in turn, "
                    "it was off by %.4g (RMS) against a section thickness of %.4g; give --section-at where the place is "
                    "known", what, places.estimate_error, 2 * places.typical_half_width)
    elif true_place is not None:
        place, record["source"] = true_place, "extent of the given coordinates"
    else:
        raise InputError(f"{what}: the model generates sections at a place along {places.axis_name}; give it with "
                         f"--section-at VALUE or LOW:HIGH (training sections: {_spans(places)})")
    low, high = places.span()
    record.update({"low": place.low, "high": place.high, "training_centres": [low, high],
                   "outside_training": places.outside_training(place)})
    if true_place is not None and record["source"] != "extent of the given coordinates":
        record.update({"true_low": true_place.low, "true_high": true_place.high})
        if requested is None:
            record["centre_error"] = place.centre - true_place.centre
    if record["outside_training"]:
        log.warning(
            "%s: the place %s along %s lies outside the training sections' centres (%g to %g): extrapolated, not "
            "interpolated", what, place, places.axis_name, low, high)
    return place, record


def _spans(places: SectionPlaces) -> str:
    return ", ".join(f"{sid} {lo:g}:{hi:g}" for sid, (lo, hi) in places.training.items())
