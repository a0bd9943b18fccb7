"""alphastomics.expression_graph: the graph of cells' neighbours in given expression, and smoothing over it."""

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from alphastomics.config import SamplingConfig
from alphastomics.expression_graph import ExpressionGraph, neighbour_graph, smooth
from alphastomics.layout import matched_spread
from alphastomics.metrics.geometry import distance_metrics
from alphastomics.metrics.neighbourhoods import knn_preservation

BDTNP_SLAB = Path(__file__).resolve().parents[1] / "resources" / "bdtnp_drosophila" / "bdtnp_slab2.h5ad"


def test_the_graph_is_row_stochastic_symmetric_and_links_cells_alike_in_expression():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 25)
    expression = rng.normal(size=(4, 12))[groups] * 5 + rng.normal(size=(100, 12)) * 0.1
    expression[:, 3] = 7.0  # a gene that does not vary: left out, not a division by zero
    graph = neighbour_graph(expression, neighbours=5, components=3)
    np.testing.assert_allclose(np.asarray(graph.sum(axis=1)).ravel(), 1.0)
    support = graph.toarray() > 0
    assert (support == support.T).all() and not support.diagonal().any()
    rows, cols = np.nonzero(support)
    assert (groups[rows] == groups[cols]).all()  # every neighbour from the cell's own group
    assert (support.sum(axis=1) >= 5).all()


def test_a_bilateral_graph_links_cells_alike_in_expression_only_among_those_near_in_the_layout():
    """Two cell types mixed over a line of cells: the plain graph links cells of a type wherever
    they lie; given the layout and a pool of 20, every link joins cells of one type at most
    twenty places apart (a pool's reach at the ends of the line), so smoothing cannot pull a type together across the tissue."""
    rng = np.random.default_rng(3)
    n = 200
    layout = np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)
    types = rng.integers(0, 2, n)
    expression = np.eye(2)[types] * 4 + rng.normal(scale=0.1, size=(n, 2))
    plain = neighbour_graph(expression, neighbours=3, components=2).tocoo()
    bilateral = neighbour_graph(expression, neighbours=3, components=2, within=layout, pool=20).tocoo()
    assert (types[bilateral.row] == types[bilateral.col]).all()
    assert np.abs(bilateral.row - bilateral.col).max() <= 20
    assert np.abs(plain.row - plain.col).max() > 50


def test_nothing_to_learn_from_leaves_values_as_they_are():
    values = np.arange(12.0).reshape(4, 3)
    for expression in (np.ones((4, 5)), np.zeros((1, 5))):
        graph = neighbour_graph(expression, neighbours=10, components=30)
        np.testing.assert_array_equal(smooth(values[: len(expression)], graph, steps=5), values[: len(expression)])
    graph = neighbour_graph(np.random.default_rng(1).normal(size=(4, 5)), 3, 2)
    np.testing.assert_array_equal(smooth(values, graph, steps=0), values)


def test_smoothing_over_real_expression_restores_neighbourhoods_a_noisy_layout_lost():
    """BDTNP slab2's real expression and true positions: each cell displaced by noise as large as a
    fifth of the slab. Smoothed over the graph of its given expression (the defaults of
    sampling.layout_smoothing_steps and the graph), then given back its spread, the layout keeps
    many more of each cell's true neighbours and ranks distances better; smoothing over a graph of
    shuffled expression (the same cells, links at random in space) does not."""
    slab = ad.read_h5ad(BDTNP_SLAB)
    expression = np.asarray(slab.X, dtype=np.float64)
    true = np.asarray(slab.obsm["spatial"], dtype=np.float64)
    rng = np.random.default_rng(0)
    noisy = true + rng.normal(size=true.shape) * true.std(axis=0) * 0.4
    defaults = SamplingConfig()
    settings = ExpressionGraph(defaults.expression_graph_neighbours, defaults.expression_graph_components,
                               defaults.layout_smoothing_steps)

    def placed(graph_expression):
        graph = neighbour_graph(graph_expression, settings.neighbours, settings.components)
        return matched_spread(smooth(noisy, graph, settings.steps), noisy[None])

    def scores(layout):
        knn = knn_preservation(true, layout, [10])[0]["knn_preservation_k10"]
        return knn, distance_metrics(true, layout, [0.1])[0]["distance_spearman_median"]

    knn_noisy, spearman_noisy = scores(noisy)
    knn_smoothed, spearman_smoothed = scores(placed(expression))
    knn_shuffled, _ = scores(placed(expression[rng.permutation(len(expression))]))
    assert knn_smoothed > 1.5 * knn_noisy
    assert spearman_smoothed > spearman_noisy
    assert knn_shuffled < knn_noisy
    np.testing.assert_allclose(np.cov(placed(expression), rowvar=False), np.cov(noisy, rowvar=False), rtol=1e-6, atol=1e-8)


def test_record_says_what_was_smoothed():
    record = ExpressionGraph(neighbours=7, components=11, steps=4).record("impute")
    assert record["neighbours"] == 7 and record["components"] == 11 and record["steps"] == 4
    assert "expr_pred_mean" in record["smoothed"]
    assert "spatial_pred_consensus" in ExpressionGraph().record("expr_to_pos")["smoothed"]
    with pytest.raises(KeyError):
        ExpressionGraph().record("joint")


def test_impute_smooths_only_the_generated_genes_over_the_graph_of_the_given_ones():
    """The posterior mean of the hidden genes moves towards the cells' neighbours in the given genes;
    the given genes' values, and the draws themselves, are left as they were."""
    from types import SimpleNamespace

    import torch

    from alphastomics.draws import Draws, refined_estimates

    rng = np.random.default_rng(2)
    expression = rng.normal(size=(60, 6))
    given = np.array([True, True, True, True, False, False])
    batch = SimpleNamespace(gene_mask=torch.ones(1, 6), given_genes=torch.from_numpy(given).float()[None])
    expected = rng.normal(size=(60, 6)).astype(np.float32)
    draws = Draws(expression=expression[None], coordinates=np.zeros((1, 60, 3)), embedding=np.zeros((60, 2)), seeds=[0],
                  expected_expression=expected)
    settings = ExpressionGraph(neighbours=5, components=3, steps=2)
    smoothed = refined_estimates(draws, expression, batch, "impute", settings)
    graph = neighbour_graph(expression[:, given], 5, 3)
    np.testing.assert_array_equal(smoothed.expected_expression[:, given], expected[:, given])
    np.testing.assert_allclose(smoothed.expected_expression[:, ~given], smooth(expected[:, ~given], graph, 2), rtol=1e-5)
    assert smoothed.expression is draws.expression and draws.expected_expression is expected
    assert refined_estimates(draws, expression, batch, "pos_to_expr", settings) is draws


def test_the_command_line_refuses_a_negative_number_of_steps(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "placed.h5ad"
    done = subprocess.run([sys.executable, "-m", "alphastomics.cli", "sample", "--checkpoint", str(tmp_path / "model.ckpt"),
                           "--mode", "expr_to_pos", "--out", str(out), "--smoothing-steps", "-1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--smoothing-steps must be at least 0" in done.stderr
    assert not out.exists()
