"""novoSpaRc de novo reconstruction (expr_to_pos), through the ``novosparc`` package (POT inside),
run as its documentation runs it.

The documented de novo recipe (novoSpaRc's ``reconstruct_tissue.py`` template and
``Tissue.reconstruct``): a target space of as many locations as cells, smooth costs from
5-nearest-neighbour graphs over the expression (the whole panel: the panels here are small, so
no highly-variable-gene subset is needed) and over the locations, then entropic
Gromov-Wasserstein transport with no reference atlas (``alpha_linear = 0``) at epsilon 5e-4,
multiplied by 10 while the solver meets numerical errors, up to 1,000 outer iterations or the
package's tolerance of 1e-9. Each cell is placed at the transport-weighted mean of the locations.

The target space is the one choice the documentation leaves to the user, and the held-out slice
never informs it. ``target="documented"``: the package's own ``construct_target_grid`` (a 1.2 : 1
rectangle of as many points as cells), 2D only. ``target="training"``: a regular grid with the
training slices' mean shape (extents along their principal axes in ``per_slice`` frames, along
the frame's axes in a ``shared`` frame) at their cell density, centred where their cells are in a
shared frame. ``target="auto"`` (the default) takes the documented grid in 2D and the training
slices' shape in 3D, where the package documents no grid: reconstructing each STARmap training
slice from the others, the documented grid ranked distances better than the training slices'
shape on both (docs/peers.md).
"""

from __future__ import annotations

import contextlib
import io
from importlib.metadata import version

import numpy as np

from alphastomics.peers.common import PeerInputs

# Tissue.reconstruct's defaults: they are the documented settings
DOCUMENTED = {"num_neighbors": 5, "epsilon": 5e-4, "max_epsilon": 5e-1, "max_iter": 1000, "tol": 1e-9}


def grid_with_extents(extents: np.ndarray, n_locations: int) -> np.ndarray:
    """A regular grid of about ``n_locations`` points filling a box with these side lengths, centred at 0."""
    extents = np.maximum(np.asarray(extents, np.float64), 1e-9)
    d = len(extents)
    spacing = (np.prod(extents) / max(n_locations, 1)) ** (1 / d)
    counts = [max(1, int(round(e / spacing))) for e in extents]
    axes = [np.linspace(-e / 2, e / 2, c) if c > 1 else np.zeros(1) for e, c in zip(extents, counts)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)


def _principal_extents(coords: np.ndarray) -> np.ndarray:
    centred = coords - coords.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes.T
    return projected.max(0) - projected.min(0)


def _training_density_and_centre(inputs: PeerInputs) -> tuple[float, np.ndarray]:
    """Cells per unit area (2D) or volume (3D) of the training slices' boxes, and where their cells
    are (a shared frame) or 0 (per-slice frames, which have no common place)."""
    d = inputs.n_dims
    coords = [s.coords[:, :d].astype(np.float64) for s in inputs.train]
    density = float(np.mean([len(c) / np.prod(np.maximum(_box(c, inputs.frame), 1e-9)) for c in coords]))
    centre = np.concatenate(coords).mean(0) if inputs.frame == "shared" else np.zeros(d)
    return density, centre


def _box(coords: np.ndarray, frame: str) -> np.ndarray:
    return coords.max(0) - coords.min(0) if frame == "shared" else _principal_extents(coords)


def _placed(grid: np.ndarray, inputs: PeerInputs) -> np.ndarray:
    """A grid centred where the training slices' cells are and scaled to their cell density, so
    that a de novo layout is drawn in the data's units (the metrics do not depend on it)."""
    density, centre = _training_density_and_centre(inputs)
    centred = grid - (grid.max(0) + grid.min(0)) / 2
    extents = np.maximum(centred.max(0) - centred.min(0), 1e-9)
    scale = (len(grid) / density / np.prod(extents)) ** (1 / grid.shape[1])
    return centred * scale + centre


def training_target_space(inputs: PeerInputs, n_locations: int) -> np.ndarray:
    """Locations with the training slices' mean shape, at their cell density (module docstring)."""
    d = inputs.n_dims
    coords = [s.coords[:, :d].astype(np.float64) for s in inputs.train]
    extents = np.mean([_box(c, inputs.frame) for c in coords], axis=0)
    return _placed(grid_with_extents(extents, n_locations), inputs)


def documented_target_space(inputs: PeerInputs, n_locations: int) -> np.ndarray:
    import novosparc

    if inputs.n_dims != 2:
        raise ValueError("novoSpaRc's construct_target_grid is 2D; use target='training' for 3D slices")
    return _placed(novosparc.gm.construct_target_grid(n_locations).astype(np.float64), inputs)


def novosparc_positions(inputs: PeerInputs, target: str = "auto", num_neighbors: int = DOCUMENTED["num_neighbors"],
                        epsilon: float = DOCUMENTED["epsilon"], max_iter: int = DOCUMENTED["max_iter"],
                        tol: float = DOCUMENTED["tol"], seed: int = 0) -> tuple[np.ndarray, dict]:
    """(N, d) positions of the held-out slice's cells, and what the run did (settings, epsilon
    used, outer iterations, whether the solver reached its tolerance)."""
    import anndata as ad
    import novosparc

    d = inputs.n_dims
    expression = inputs.test.expression[:, inputs.test.gene_mask.astype(bool)].astype(np.float64)
    n_cells = len(expression)
    if target == "auto":
        target = "documented" if d == 2 else "training"
    if target == "training":
        locations = training_target_space(inputs, n_cells)
    elif target == "documented":
        locations = documented_target_space(inputs, n_cells)
    else:
        raise ValueError(f"novosparc: target must be 'auto', 'training' or 'documented', not {target!r}")
    tissue = novosparc.cm.Tissue(dataset=ad.AnnData(X=expression), locations=locations)
    with contextlib.redirect_stdout(io.StringIO()):
        tissue.setup_smooth_costs(num_neighbors_s=num_neighbors, num_neighbors_t=num_neighbors, verbose=False)
    p_locations, p_expression = novosparc.rc.create_space_distributions(tissue.num_locations, tissue.num_cells)
    # Tissue.reconstruct's epsilon search, with the solver's log kept so that the status can say
    # whether it converged (reconstruct itself does not return it)
    eps = epsilon
    while True:
        out, log = io.StringIO(), {"err": []}
        with contextlib.redirect_stdout(out):
            transport, log = novosparc.rc._GWadjusted.gromov_wasserstein_adjusted_norm(
                tissue.costs["markers"], tissue.costs["expression"], tissue.costs["locations"], 0, p_expression,
                p_locations, "square_loss", epsilon=eps, max_iter=max_iter, tol=tol, verbose=True, log=log)
        failed = "numerical errors" in out.getvalue() or not np.isfinite(transport).all() or transport.sum() <= 0
        if not failed or eps * 10 >= DOCUMENTED["max_epsilon"]:
            break
        eps *= 10
    if failed:
        raise RuntimeError(f"novoSpaRc's solver met numerical errors up to epsilon {eps:g}")
    errors = log.get("err", [])
    converged = bool(errors) and float(errors[-1]) <= tol
    iterations = 10 * (len(errors) - 1) + 1 if converged else max_iter
    weights = transport / np.maximum(transport.sum(1, keepdims=True), 1e-300)
    run = {"package": "novosparc", "package_version": version("novosparc"),
           "settings": {"target": target, "n_locations": int(len(locations)), "num_neighbors": num_neighbors,
                        "epsilon": epsilon, "max_iter": max_iter, "tol": tol, "alpha_linear": 0,
                        "expression": f"whole panel ({expression.shape[1]} genes)"},
           "epsilon_used": eps, "outer_iterations": iterations, "converged": converged}
    if errors:
        run["final_change"] = float(errors[-1])
    return weights @ locations, run
