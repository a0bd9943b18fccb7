"""Coordinate frames: how source coordinates map to the model's frame and back, fitted on the
training slices only, so that generated coordinates come back in source units without looking at
the true coordinates of the slice being generated.

- ``per_slice``: each slice lives in its own frame (sections of different animals, or of one
  animal never registered). Model coordinates are the slice's coordinates minus its centroid,
  divided by a scale that depends only on the number of cells: s(n) = c_d * n^(1/d), the radius of
  a tissue of n cells at the training slices' cell density (c_d fitted per dimensionality d). The
  network is E(n)-equivariant there, and generated coordinates come back centred at the origin,
  in source units, in an arbitrary orientation.
- ``shared``: all slices live in one frame (a registered atlas such as Allen CCF, slabs or
  z-planes of one specimen). Model coordinates are (coordinates - c) / s with one centre c and one
  scale s from all training cells; the network may use absolute position, and generated
  coordinates come back in the atlas frame.

In both frames the model sees coordinates whose per-axis spread is about 1, the scale of the
diffusion noise.

A ``shared`` frame may have a cutting axis (``places``, alphastomics.data.places): then the
coordinate along it is measured from the section's place and scaled so that every section is as
thick as the training sections on average. A section generated at a place lies within it by
construction, and the network, shown the place itself, learns what the tissue is like there;
without this, a prior over absolute positions put no cells in the gap between two training slabs
(docs/model.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alphastomics.data.places import Place, SectionPlaces

FRAMES = ("per_slice", "shared")
# Generated cells closer than this quantile of the training cells' nearest-neighbour distances are
# pushed apart (CoordinateFrame.cell_spacing): real cells do not overlap, and the quarter of them
# closest to a neighbour are still that far apart.
SPACING_QUANTILE = 0.25


def nearest_distance_quantile(slices: list[tuple[np.ndarray, int]], quantile: float = SPACING_QUANTILE) -> float:
    """The ``quantile`` over the cells of ``slices`` ((coordinates, n_dims) each, source units) of
    each cell's distance to its nearest other cell of its slice (0 without two distinct cells)."""
    from scipy.spatial import cKDTree

    distances = [cKDTree(c[:, :d]).query(c[:, :d], k=2)[0][:, 1] for c, d in slices if len(c) > 1]
    distances = np.concatenate(distances) if distances else np.zeros(0)
    distances = distances[distances > 0]
    return float(np.quantile(distances, quantile)) if distances.size else 0.0


def rms_per_axis(coords: np.ndarray) -> float:
    """Root mean square over cells and axes of the coordinates' deviation from their centroid."""
    centred = coords - coords.mean(0)
    return float(np.sqrt(np.mean(centred**2)))


def _from_place(coords: np.ndarray, place: Place, places: SectionPlaces) -> np.ndarray:
    """Source coordinates with the cutting axis measured from the section's place, at the typical thickness."""
    out = coords.astype(np.float64).copy()
    out[:, places.axis] = (out[:, places.axis] - place.centre) * places.thickness_factor(place)
    return out


@dataclass
class CoordinateFrame:
    kind: str
    # per_slice: d -> c_d with s(n) = c_d * n^(1/d) (keys are "2" and "3": JSON-friendly)
    density_scale: dict[str, float] = field(default_factory=dict)
    # shared: the one centre and scale of the atlas frame
    centre: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: float = 1.0
    dims: int = 2  # the training slices' dimensionality (3 if any was 3D): default of slices with no coordinates
    places: SectionPlaces | None = None  # shared frame with a cutting axis: the sections' places
    # source units: generated cells are kept at least about this far apart (nearest_distance_quantile;
    # 0 in models saved before it, which leave generated cells as drawn)
    cell_spacing: float = 0.0

    @classmethod
    def fit(cls, kind: str, slices: list[tuple[np.ndarray, int]], places: SectionPlaces | None = None) -> "CoordinateFrame":
        """``slices``: (coordinates (n, 3), n_dims) of each training slice; ``places``: a shared
        frame's cutting axis and the slices' places along it (in the order of ``slices``)."""
        if kind not in FRAMES:
            raise ValueError(f"unknown coordinate frame {kind!r} (one of {', '.join(FRAMES)})")
        if places is not None and kind != "shared":
            raise ValueError("a cutting axis (section_axis) needs the shared coordinate frame")
        spacing = nearest_distance_quantile([(np.asarray(c, np.float64), d) for c, d in slices])
        if kind == "shared":
            if places is not None:  # the spread the model sees: along the axis, from each section's place
                slices = [(_from_place(c, place, places), d) for (c, d), place in zip(slices, places.sections)]
            all_coords = np.concatenate([c for c, _ in slices]).astype(np.float64)
            used = np.array([any(d == 3 for _, d in slices) or axis < 2 for axis in range(3)])
            centre = all_coords.mean(0)
            if places is not None:  # each section about its own place (the network adds the place back)
                centre[places.axis] = 0.0
            spread = np.sqrt(np.mean((all_coords[:, used] - centre[used]) ** 2)) or 1.0
            # 2D sections at different z of one specimen: z is part of the frame, centred with the rest.
            return cls(kind, centre=[float(v) for v in centre], scale=float(spread), dims=max(d for _, d in slices),
                       places=places, cell_spacing=spacing)
        logs: dict[int, list[float]] = {}
        for coords, d in slices:
            n = coords.shape[0]
            spread = rms_per_axis(coords[:, :d].astype(np.float64))
            if n >= 2 and spread > 0:
                logs.setdefault(d, []).append(np.log(spread / n ** (1.0 / d)))
        if not logs:
            raise ValueError("no training slice with at least two distinct cells to fit the coordinate scale")
        return cls(kind, density_scale={str(d): float(np.exp(np.mean(v))) for d, v in logs.items()},
                   dims=max(d for _, d in slices), cell_spacing=spacing)

    def slice_scale(self, n_cells: int, n_dims: int) -> float:
        """Source units per model unit for a slice of ``n_cells`` cells."""
        if self.kind == "shared":
            return self.scale
        c = self.density_scale.get(str(n_dims))
        if c is None:
            known = ", ".join(f"{d}D" for d in sorted(self.density_scale))
            raise ValueError(f"the model was trained on {known} slices only; it has no {n_dims}D coordinate scale")
        return c * max(n_cells, 1) ** (1.0 / n_dims)

    def place_features(self, place: Place) -> list[float]:
        """What the network is shown of a place: the centre along the cutting axis in model units,
        the model units of the section's own coordinate along the axis per model unit of the
        frame's (to see its cells at their absolute place), and its thickness relative to the
        training sections' mean (0 for a plane)."""
        typical = self.places.typical_half_width
        return [(place.centre - self.places.origin) / self.scale, 1.0 / self.places.thickness_factor(place),
                place.half_width / typical if typical > 0 else 0.0]

    def place_from_features(self, features) -> Place:
        """The place behind ``place_features`` (a batch's ``places`` row)."""
        centre = float(features[0]) * self.scale + self.places.origin
        half = float(features[2]) * self.places.typical_half_width
        return Place(centre - half, centre + half)

    def _require_place(self, place: Place | None) -> Place:
        if place is None:
            raise ValueError("this frame has a cutting axis: coordinates map to it only with the section's place")
        return place

    def to_model(self, coords: np.ndarray, n_dims: int, place: Place | None = None) -> np.ndarray:
        """Source (n, 3) -> model frame (n, 3); per_slice: centred on the slice, unused axes 0;
        with a cutting axis, the section's ``place`` is its origin along it."""
        coords = coords.astype(np.float64)
        if self.kind == "shared":
            if self.places is not None:
                coords = _from_place(coords, self._require_place(place), self.places)
            return ((coords - np.asarray(self.centre)) / self.scale).astype(np.float32)
        model = (coords - coords.mean(0)) / self.slice_scale(coords.shape[0], n_dims)
        model[:, n_dims:] = 0.0
        return model.astype(np.float32)

    def to_source(self, model: np.ndarray, n_dims: int, place: Place | None = None) -> np.ndarray:
        """Model frame (n, 3) -> source units; per_slice coordinates are centred at the origin."""
        model = model.astype(np.float64)
        if self.kind == "shared":
            source = model * self.scale + np.asarray(self.centre)
            if self.places is not None:
                place, axis = self._require_place(place), self.places.axis
                source[:, axis] = source[:, axis] / self.places.thickness_factor(place) + place.centre
            return source.astype(np.float32)
        return (model * self.slice_scale(model.shape[0], n_dims)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "density_scale": dict(self.density_scale), "centre": list(self.centre), "scale": self.scale,
                "dims": self.dims, "places": None if self.places is None else self.places.to_dict(),
                "cell_spacing": self.cell_spacing}

    @classmethod
    def from_dict(cls, d: dict) -> "CoordinateFrame":
        return cls(d["kind"], dict(d.get("density_scale", {})), list(d.get("centre", [0.0, 0.0, 0.0])), float(d.get("scale", 1.0)),
                   int(d.get("dims", 2)), SectionPlaces.from_dict(d.get("places")), float(d.get("cell_spacing", 0.0)))
