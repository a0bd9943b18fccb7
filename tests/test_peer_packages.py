"""Each peer package, run as its own documentation runs it, behaves as documented on a small case
(so a peer that scores low in the benchmark is the method, not a broken install or a misuse):

- novoSpaRc, its de novo intestine example: zonated expression, a line of zones as the target
  space, 5 expression neighbours and 2 location neighbours; the reconstruction orders the cells
  by zone.
- CeLEry, its tutorial: z-scored expression, ``Fit_cord`` on a reference whose genes follow its
  coordinates, ``Predict_cord`` on a query: coordinates in [0, 1] over the reference's range.
- Tangram, its documented mapping: ``pp_adatas``, ``map_cells_to_space(mode="cells")`` of
  single cells onto spots that are those cells, shuffled: each cell maps to its own spot.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from scipy.stats import spearmanr


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def zonated_cells(n_per_zone: int, n_zones: int, n_genes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cells of ``n_zones`` zones along one axis; each gene peaks at its own place along it."""
    rng = np.random.default_rng(seed)
    zones = np.repeat(np.arange(n_zones), n_per_zone)
    position = (zones + rng.uniform(0, 1, len(zones))) / n_zones
    peaks = np.linspace(0, 1, n_genes)
    mean = np.exp(-((position[:, None] - peaks[None]) ** 2) / (2 * 0.15 ** 2)) * 10
    return rng.poisson(mean).astype(np.float64), zones


def test_novosparc_intestine_example_orders_cells_by_zone():
    novosparc = pytest.importorskip("novosparc", reason="the peers extra is not installed")
    dge, zones = zonated_cells(20, 7, 30)
    dge = dge / np.maximum(dge.sum(1, keepdims=True), 1)  # the example divides by each cell's total
    locations = np.vstack((range(7), np.ones(7))).T
    cost_expression, cost_locations = novosparc.rc.setup_for_OT_reconstruction(
        dge, locations, num_neighbors_source=5, num_neighbors_target=2, verbose=False)
    p_locations, p_expression = novosparc.rc.create_space_distributions(len(locations), len(dge))
    with contextlib.redirect_stdout(io.StringIO()):
        gw = novosparc.rc._GWadjusted.gromov_wasserstein_adjusted_norm(
            np.ones((len(dge), len(locations))), cost_expression, cost_locations, 0, p_expression, p_locations,
            "square_loss", epsilon=5e-4, verbose=False)
    embedded_zone = (gw / gw.sum(1, keepdims=True)) @ np.arange(7)
    # de novo reconstruction recovers the axis up to its direction
    assert abs(spearmanr(embedded_zone, zones)[0]) > 0.85


def test_celery_tutorial_predicts_coordinates_on_the_reference_s_unit_square(tmp_path):
    CeLEry = pytest.importorskip("CeLEry", reason="the peers extra is not installed")
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (400, 2))
    centres = rng.uniform(0, 50, (24, 2))
    expression = np.exp(-((xy[:, None] - centres[None]) ** 2).sum(-1) / (2 * 12.0 ** 2)) * 5 + rng.normal(0, 0.1, (400, 24))
    reference = ad.AnnData(X=expression[:300].astype(np.float32), obs=pd.DataFrame({"x": xy[:300, 0], "y": xy[:300, 1]}))
    query = ad.AnnData(X=expression[300:].astype(np.float32))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        CeLEry.get_zscore(reference)
        CeLEry.get_zscore(query)
        CeLEry.Fit_cord(data_train=reference, hidden_dims=[30, 25, 15], num_epochs_max=60, path=str(tmp_path),
                        filename="example", batch_size=16, num_workers=0)
        predicted = CeLEry.Predict_cord(data_test=query, path=str(tmp_path), filename="example")
    assert predicted.shape == (100, 2) and (predicted >= 0).all() and (predicted <= 1).all()
    # on the reference's unit square: (x - (min - 1)) / (max - min + 2), as the package scales it
    low, high = xy[:300].min(0) - 1, xy[:300].max(0) + 1
    truth = (xy[300:] - low) / (high - low)
    for axis in range(2):
        assert spearmanr(predicted[:, axis], truth[:, axis])[0] > 0.8


def test_tangram_maps_each_cell_to_the_spot_it_came_from():
    tg = pytest.importorskip("tangram", reason="the peers extra is not installed")
    import logging

    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    cells = rng.gamma(0.5, 2.0, (120, 40)).astype(np.float32)
    order = rng.permutation(120)
    genes = [f"g{i}" for i in range(40)]
    ad_sc = ad.AnnData(X=cells, var=pd.DataFrame(index=genes))
    ad_sp = ad.AnnData(X=cells[order], var=pd.DataFrame(index=genes))
    logging.getLogger().setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        tg.pp_adatas(ad_sc, ad_sp, genes=genes)
        mapping = tg.map_cells_to_space(ad_sc, ad_sp, mode="cells", device="cpu", num_epochs=300, random_state=0,
                                        verbose=False)
    logging.getLogger().setLevel(logging.INFO)
    spot_of_cell = np.asarray(mapping.X).argmax(1)  # cells x spots
    assert (order[spot_of_cell] == np.arange(120)).mean() > 0.9


def test_every_peer_run_records_its_package_version_and_settings(bdtnp_dir):
    pytest.importorskip("novosparc", reason="the peers extra is not installed")
    from alphastomics.peers.common import load_inputs
    from alphastomics.peers.methods import run_method

    inputs = load_inputs(bdtnp_dir, "slab2", frame="shared")
    adata = run_method("novosparc", "expr_to_pos", inputs, options={"max_iter": 3})
    run = adata.uns["alphastomics"]["method_run"]
    assert run["package"] == "novosparc" and run["package_version"].count(".") >= 1
    assert run["settings"]["max_iter"] == 3 and run["outer_iterations"] == 3 and run["converged"] is False
