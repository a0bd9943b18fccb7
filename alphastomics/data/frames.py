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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAMES = ("per_slice", "shared")


def rms_per_axis(coords: np.ndarray) -> float:
    """Root mean square over cells and axes of the coordinates' deviation from their centroid."""
    centred = coords - coords.mean(0)
    return float(np.sqrt(np.mean(centred**2)))


@dataclass
class CoordinateFrame:
    kind: str
    # per_slice: d -> c_d with s(n) = c_d * n^(1/d) (keys are "2" and "3": JSON-friendly)
    density_scale: dict[str, float] = field(default_factory=dict)
    # shared: the one centre and scale of the atlas frame
    centre: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: float = 1.0
    dims: int = 2  # the training slices' dimensionality (3 if any was 3D): default of slices with no coordinates

    @classmethod
    def fit(cls, kind: str, slices: list[tuple[np.ndarray, int]]) -> "CoordinateFrame":
        """``slices``: (coordinates (n, 3), n_dims) of each training slice."""
        if kind not in FRAMES:
            raise ValueError(f"unknown coordinate frame {kind!r} (one of {', '.join(FRAMES)})")
        if kind == "shared":
            all_coords = np.concatenate([c for c, _ in slices]).astype(np.float64)
            used = np.array([any(d == 3 for _, d in slices) or axis < 2 for axis in range(3)])
            centre = all_coords.mean(0)
            spread = np.sqrt(np.mean((all_coords[:, used] - centre[used]) ** 2)) or 1.0
            # 2D sections at different z of one specimen: z is part of the frame, centred with the rest.
            return cls(kind, centre=[float(v) for v in centre], scale=float(spread), dims=max(d for _, d in slices))
        logs: dict[int, list[float]] = {}
        for coords, d in slices:
            n = coords.shape[0]
            spread = rms_per_axis(coords[:, :d].astype(np.float64))
            if n >= 2 and spread > 0:
                logs.setdefault(d, []).append(np.log(spread / n ** (1.0 / d)))
        if not logs:
            raise ValueError("no training slice with at least two distinct cells to fit the coordinate scale")
        return cls(kind, density_scale={str(d): float(np.exp(np.mean(v))) for d, v in logs.items()},
                   dims=max(d for _, d in slices))

    def slice_scale(self, n_cells: int, n_dims: int) -> float:
        """Source units per model unit for a slice of ``n_cells`` cells."""
        if self.kind == "shared":
            return self.scale
        c = self.density_scale.get(str(n_dims))
        if c is None:
            known = ", ".join(f"{d}D" for d in sorted(self.density_scale))
            raise ValueError(f"the model was trained on {known} slices only; it has no {n_dims}D coordinate scale")
        return c * max(n_cells, 1) ** (1.0 / n_dims)

    def to_model(self, coords: np.ndarray, n_dims: int) -> np.ndarray:
        """Source (n, 3) -> model frame (n, 3); per_slice: centred on the slice, unused axes 0."""
        coords = coords.astype(np.float64)
        if self.kind == "shared":
            return ((coords - np.asarray(self.centre)) / self.scale).astype(np.float32)
        model = (coords - coords.mean(0)) / self.slice_scale(coords.shape[0], n_dims)
        model[:, n_dims:] = 0.0
        return model.astype(np.float32)

    def to_source(self, model: np.ndarray, n_dims: int) -> np.ndarray:
        """Model frame (n, 3) -> source units; per_slice coordinates are centred at the origin."""
        model = model.astype(np.float64)
        if self.kind == "shared":
            return (model * self.scale + np.asarray(self.centre)).astype(np.float32)
        return (model * self.slice_scale(model.shape[0], n_dims)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "density_scale": dict(self.density_scale), "centre": list(self.centre), "scale": self.scale,
                "dims": self.dims}

    @classmethod
    def from_dict(cls, d: dict) -> "CoordinateFrame":
        return cls(d["kind"], dict(d.get("density_scale", {})), list(d.get("centre", [0.0, 0.0, 0.0])), float(d.get("scale", 1.0)),
                   int(d.get("dims", 2)))
