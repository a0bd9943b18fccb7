"""What the training atlas holds near a position: the expression prior of a shared frame.

In a shared frame (a registered atlas, slabs of one specimen) a cell's position says much about its
expression: the average of the training cells nearest to it is a strong estimate (the `knn` peer).
The network is shown that average, for each cell whose position is given (`pos_to_expr`,
`impute`), with how close those cells are, and learns to refine it rather than to rebuild it from
its weights.

A training section must not see itself, and leaving it out whole gives the cells deep inside an
end slab neighbours far away, worse than a held-out section between two training ones gets; so
each example draws either that prior or one with a hole of the section's own cells around each cell
(AtlasReference.training_priors), and the network is shown how close the neighbours are, to learn
where to trust the prior. A share of examples is trained without it (``training.atlas_prior_dropout``),
so that a file with no usable prior is still handled. The reference cells travel with the model
(alphastomics.checkpoint), so sampling a user's file needs no training data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from alphastomics.data.expression import ExpressionCodec

log = logging.getLogger(__name__)

# Cells x channels kept as the reference (float16): bounds the model file (about 40 MB) at thousands
# of genes or millions of cells; below it every training cell is kept.
MAX_REFERENCE_ENTRIES = 20_000_000
PRIOR_CHUNK_ENTRIES = 16_000_000  # neighbours' channels gathered at once (memory of a large section)
# Closeness of the neighbours, exp(-mean distance / scale), at these scales in units of the
# reference's cell spacing: 1 where they are near, 0 where far (and where a prior is dropped).
CLOSENESS_SCALES = (2.0, 4.0, 8.0, 16.0)
# Training priors with a hole in the section's own cells around each cell, cubes of these sides in
# cell spacings (AtlasReference.training_priors).
HOLE_SIDES = (4.0, 8.0, 16.0, 32.0)
# model.atlas_prior_neighbours: auto chooses among these, scoring at most CHOICE_CELLS cells of each
# training section (AtlasReference.choose_neighbours).
NEIGHBOUR_CHOICES = (5, 10, 15, 20, 30, 50)
CHOICE_CELLS = 2000


@dataclass
class AtlasReference:
    coords: np.ndarray  # (M, 3) float32, the shared frame's source units
    channels: np.ndarray  # (M, C) float16 expression channels (alphastomics.data.expression)
    targets: np.ndarray  # (M, C) bool, where a channel was measured
    section: np.ndarray  # (M,) int32, index into slice_ids
    slice_ids: list[str]
    neighbours: int
    spacing: float  # median distance of a reference cell to its nearest one (source units)

    @classmethod
    def fit(cls, slices, codec: ExpressionCodec, neighbours: int | str, seed: int = 0) -> "AtlasReference | None":
        """The reference of training ``slices`` (SliceData); None without any. With one section its
        prior in training comes from its own cells beyond a hole around each cell (training_priors).
        ``neighbours``: how many nearest cells a prior averages, or "auto" (choose_neighbours)."""
        if not slices or neighbours == 0:
            return None
        coords, channels, targets, section = [], [], [], []
        for index, s in enumerate(slices):
            encoded, target = codec.encode(s.expression, s.gene_mask)
            coords.append(s.coords.astype(np.float32))
            channels.append(encoded.astype(np.float16))
            targets.append(target > 0)
            section.append(np.full(len(encoded), index, dtype=np.int32))
        coords, channels, targets, section = (np.concatenate(a) for a in (coords, channels, targets, section))
        keep = MAX_REFERENCE_ENTRIES // max(channels.shape[1], 1)
        if len(coords) > keep:
            chosen = np.sort(np.random.default_rng(seed).choice(len(coords), keep, replace=False))
            log.info("atlas prior: %d of the %d training cells kept as its reference", keep, len(coords))
            coords, channels, targets, section = coords[chosen], channels[chosen], targets[chosen], section[chosen]
        nearest, _ = cKDTree(coords).query(coords, k=2)
        spacing = float(np.median(nearest[:, 1])) or 1.0
        reference = cls(coords, channels, targets, section, [s.slice_id for s in slices], 0, spacing)
        if neighbours == "auto":
            scores = reference.choose_neighbours(seed)
            neighbours = max(scores, key=scores.get)
            log.info("atlas prior: %d neighbours (median Pearson over channels of each training section predicted "
                     "from the others: %s)", neighbours, ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()))
        reference.neighbours = int(neighbours)
        return reference

    def choose_neighbours(self, seed: int = 0) -> dict[int, float]:
        """For each of NEIGHBOUR_CHOICES, how well the mean of that many nearest cells of the other
        training sections predicts a section's own channels: the median over channels of their
        Pearson correlation over the section's cells (those that measured the channel), averaged over
        sections. The best number is a property of the data, not of the model: smooth atlases of
        averaged expression want few neighbours, noisy single cells many (docs/model.md)."""
        rng = np.random.default_rng(seed)
        C = self.channels.shape[1]
        totals = np.zeros(len(NEIGHBOUR_CHOICES))
        for index in range(len(self.slice_ids)):
            cells = np.flatnonzero(self.section == index)
            if len(cells) > CHOICE_CELLS:
                cells = np.sort(rng.choice(cells, CHOICE_CELLS, replace=False))
            nearest = self._nearest_elsewhere(cells, max(NEIGHBOUR_CHOICES))
            k = nearest.shape[1]
            correlations = np.full((len(NEIGHBOUR_CHOICES), C), np.nan)
            step = max(1, PRIOR_CHUNK_ENTRIES // (len(cells) * k))
            for first in range(0, C, step):
                block = slice(first, first + step)
                weight = self.targets[nearest, block].astype(np.float32)  # (cells, k, channels)
                running = np.cumsum(self.channels[nearest, block].astype(np.float32) * weight, axis=1)
                counts = np.cumsum(weight, axis=1)
                truth = self.channels[cells, block].astype(np.float32)
                measured = self.targets[cells, block]
                for j, choice in enumerate(NEIGHBOUR_CHOICES):
                    at = min(choice, k) - 1
                    estimate = running[:, at] / np.maximum(counts[:, at], 1.0)
                    correlations[j, block] = _masked_pearson(truth, estimate, measured)
            with np.errstate(all="ignore"):
                totals += np.nan_to_num(np.nanmedian(correlations, axis=1))
        return {choice: float(total / len(self.slice_ids)) for choice, total in zip(NEIGHBOUR_CHOICES, totals)}

    def _nearest_elsewhere(self, cells: np.ndarray, k: int) -> np.ndarray:
        """(len(cells), k') indices of the reference cells nearest each of ``cells`` (all of one
        section) among the other sections; where there is no other, among the section's own cells
        outside the cube of side HOLE_SIDES[0] around each cell (training_priors' nearest variant)."""
        own = self.section == self.section[cells[0]]
        coords = self.coords[cells]
        if not own.all():
            return self._nearest(coords, ~own, k)[1]
        holes = list(self._holes(coords, own, HOLE_SIDES[0]))
        k = min(k, min(int(use.sum()) for _, use in holes))
        nearest = np.empty((len(cells), k), dtype=np.int64)
        for rows, use in holes:
            nearest[rows] = self._nearest(coords[rows], use, k)[1]
        return nearest

    def _holes(self, coords: np.ndarray, own: np.ndarray, side: float):
        """For each cube of a grid of side ``side`` cell spacings: which of ``coords`` lie in it, and
        the reference cells they may use, all but the ``own`` section's cells in that cube."""
        cube, reference_cube = _cube_ids(coords, self.coords, side * self.spacing)
        for value in np.unique(cube):
            yield cube == value, ~(own & (reference_cube == value))

    def _nearest(self, coords: np.ndarray, use: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, reference indices), each (len(coords), k'), of the k' = min(k, cells used)
        reference cells nearest each of ``coords`` among those where ``use``."""
        k = min(k, int(use.sum()))
        distance, nearest = cKDTree(self.coords[use]).query(coords, k=k)
        return distance.reshape(len(coords), k), np.flatnonzero(use)[nearest.reshape(len(coords), k)]

    @property
    def width(self) -> int:
        """Values of a cell's prior: the channels, then the closeness features."""
        return self.channels.shape[1] + len(CLOSENESS_SCALES)

    def prior(self, coords: np.ndarray, exclude: str | None = None) -> np.ndarray:
        """(n, C + len(CLOSENESS_SCALES)) float32: for each position (source units), the mean channels
        of its ``neighbours`` nearest reference cells, leaving out the section ``exclude`` (a training
        section's own cells), each channel averaged over the cells that measured it (0 where none
        did); then their closeness (CLOSENESS_SCALES)."""
        use = np.ones(len(self.coords), dtype=bool)
        if exclude is not None and exclude in self.slice_ids:
            use = self.section != self.slice_ids.index(exclude)
        return self._nearest_mean(np.asarray(coords, dtype=np.float32), use)

    def training_priors(self, coords: np.ndarray, slice_id: str) -> np.ndarray:
        """(V, n, width) float16: the V priors a training section is trained with,
        one drawn per example. The first leaves the whole section out; each other leaves out, for
        each cell, the cells of the section in the cube of side HOLE_SIDES (in cell spacings) around
        it (a grid of cubes), so that its own cells beyond the hole count. Leaving the section out
        alone gives mostly distant neighbours, a held-out section between two training ones has near
        ones: together the variants cover both, each labelled by its closeness. The reference's only
        section has no other to leave itself out to: its variants are the holes alone."""
        coords = np.asarray(coords, dtype=np.float32)
        own = self.section == self.slice_ids.index(slice_id) if slice_id in self.slice_ids else np.zeros(len(self.coords), bool)
        variants = [] if own.all() else [self.prior(coords, exclude=slice_id)]
        for side in HOLE_SIDES:
            out = np.empty((len(coords), self.width), dtype=np.float32)
            for cells, use in self._holes(coords, own, side):
                out[cells] = self._nearest_mean(coords[cells], use)
            variants.append(out)
        return np.stack(variants).astype(np.float16)

    def _nearest_mean(self, coords: np.ndarray, use: np.ndarray) -> np.ndarray:
        if not use.any():
            return np.zeros((len(coords), self.width), dtype=np.float32)
        distance, nearest = self._nearest(coords, use, self.neighbours)
        k = nearest.shape[1]
        out = np.empty((len(coords), self.width), dtype=np.float32)
        C = self.channels.shape[1]
        mean_distance = distance.mean(1, keepdims=True) / self.spacing
        out[:, C:] = np.exp(-mean_distance / np.asarray(CLOSENESS_SCALES, dtype=np.float32))
        step = max(1, PRIOR_CHUNK_ENTRIES // (k * max(C, 1)))
        for start in range(0, len(coords), step):
            rows = nearest[start:start + step]
            weight = self.targets[rows].astype(np.float32)  # (cells, k, C)
            total = (self.channels[rows].astype(np.float32) * weight).sum(1)
            out[start:start + step, :C] = total / np.maximum(weight.sum(1), 1.0)
        return out

    def to_dict(self) -> dict:
        return {"coords": self.coords, "channels": self.channels, "targets": self.targets, "section": self.section,
                "slice_ids": list(self.slice_ids), "neighbours": self.neighbours, "spacing": self.spacing}

    @classmethod
    def from_dict(cls, d: dict | None) -> "AtlasReference | None":
        if not d:
            return None
        return cls(np.asarray(d["coords"], dtype=np.float32), np.asarray(d["channels"], dtype=np.float16),
                   np.asarray(d["targets"], dtype=bool), np.asarray(d["section"], dtype=np.int32),
                   list(d["slice_ids"]), int(d["neighbours"]), float(d["spacing"]))



def _masked_pearson(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C,) Pearson correlation of each column of x and y over the rows where ``mask``; NaN where
    fewer than 3 rows or either column is constant there."""
    m = mask.astype(np.float64)
    n = m.sum(0)
    with np.errstate(all="ignore"):
        mx, my = (x * m).sum(0) / n, (y * m).sum(0) / n
        dx, dy = (x - mx) * m, (y - my) * m
        r = (dx * dy).sum(0) / np.sqrt((dx ** 2).sum(0) * (dy ** 2).sum(0))
    r[(n < 3) | ~np.isfinite(r)] = np.nan
    return r


def _cube_ids(points: np.ndarray, reference: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Which cube of one grid of ``side`` each point and each reference point lies in (int ids)."""
    cells = np.floor(np.concatenate([points, reference]) / side).astype(np.int64)
    ids = np.unique(cells, axis=0, return_inverse=True)[1].ravel()
    return ids[: len(points)], ids[len(points):]
