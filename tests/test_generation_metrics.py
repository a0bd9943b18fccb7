"""Metrics that need no cell correspondence (shape, distribution, composition) and the reference
rows that put them in context, each checked against an independent computation."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from alphastomics.metrics import distribution, geometry, metric_direction
from alphastomics.references import CellTyper, ReferenceSlice, joint_rows


def _ellipse(n=600, axes=(4.0, 1.0), seed=0):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 2)) * np.array(axes)
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T + np.array([100.0, -20.0])


def test_extent_ratios_follow_axis_scaling_and_ignore_rigid_motion():
    true = _ellipse()
    centred = true - true.mean(0)
    # principal axes of the true set: stretch the long axis by 1.5 and shrink the short one to 0.5
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    scaled = (centred @ vt.T * np.array([1.5, 0.5])) @ vt
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(2, 2)))
    moved = scaled @ q.T + 55.0
    assert geometry.extent_ratios(true, moved) == pytest.approx([1.5, 0.5], rel=1e-9)
    values, _ = geometry.shape_metrics(true, moved, 5000, 0)
    assert values["extent_ratio_worst"] == pytest.approx(0.5)
    assert values["extent_ratio_anisotropy"] == pytest.approx(3.0)  # 1.5 / 0.5
    # the same shape at any size is not anisotropic, whichever way it is turned
    resized, _ = geometry.shape_metrics(true, (centred * 2.5) @ q.T, 5000, 0)
    assert resized["extent_ratio_worst"] == pytest.approx(2.5) and resized["extent_ratio_anisotropy"] == pytest.approx(1.0)
    # a collapsed (1-D) prediction: the second axis ratio is ~0
    line = np.c_[centred[:, 0], np.zeros(len(true))]
    assert geometry.extent_ratios(true, line)[1] < 1e-9


def test_distance_distribution_distance_matches_exact_wasserstein_of_all_pairs():
    true = _ellipse(300)
    grown = (true - true.mean(0)) * 1.4
    radius = np.sqrt(((true - true.mean(0)) ** 2).sum(1).mean())
    # scaling every distance by c moves the distribution by (c - 1) * mean distance (monotone coupling)
    expected = 0.4 * pdist(true).mean() / radius
    assert geometry.distance_distribution_distance(true, grown, 200_000, 0) == pytest.approx(expected, rel=0.03)
    assert geometry.distance_distribution_distance(true, true + 7.0, 200_000, 0) < 0.02


def test_spacing_metrics_catch_piled_up_cells_and_gaps():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0)), -1).reshape(-1, 2)  # spacing 1
    values, _ = geometry.spacing_metrics(grid, grid * 1.0 + 5)
    assert values["nn_distance_ratio_median"] == pytest.approx(1.0) and values["nn_distance_wasserstein_rel"] < 1e-9
    cloud = rng.normal(size=grid.shape) * grid.std(0)  # same extent, Gaussian: cells pile up in the middle
    piled, _ = geometry.spacing_metrics(grid, cloud)
    assert piled["nn_distance_ratio_median"] < 0.8 and piled["nn_distance_wasserstein_rel"] > 0.3
    # exact value on a case worked by hand: every generated neighbour distance is 2 instead of 1
    assert geometry.spacing_metrics(grid, grid * 2)[0]["nn_distance_wasserstein_rel"] == pytest.approx(1.0)


def test_density_spread_tells_an_evenly_filled_tissue_from_a_gaussian_cloud():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(1)
    square = rng.uniform(0, 100, size=(1500, 2))
    # independent computation: the 10th other neighbour from scikit-learn's brute-force search
    distances, _ = NearestNeighbors(n_neighbors=11, algorithm="brute").fit(square).kneighbors(square)
    expected = np.log(distances[:, 10]).std()
    assert geometry.local_density_spread(square) == pytest.approx(expected, rel=1e-9)
    # size, position and a flat z = 0 column change nothing
    flat = np.c_[square * 3.0 + 40.0, np.zeros(len(square))]
    assert geometry.local_density_spread(flat) == pytest.approx(expected, rel=1e-9)
    # a Gaussian cloud of the same extent on both axes: dense middle, sparse rim
    cloud = rng.normal(size=square.shape) * square.std(0)
    values, how = geometry.spacing_metrics(square, cloud)
    assert geometry.extent_ratios(square, cloud) == pytest.approx([1.0, 1.0], abs=0.1)
    assert values["density_spread_ratio"] > 1.4
    assert how["density_spread_ratio"]["true_spread"] == pytest.approx(expected)
    assert geometry.spacing_metrics(square, square[::-1] * 0.5)[0]["density_spread_ratio"] == pytest.approx(1.0)
    assert metric_direction("density_spread_ratio") == "one"


def _sorted_wasserstein(a, b):
    """1-D Wasserstein distance of two equal-size samples: the mean gap between their order statistics."""
    return np.mean(np.abs(np.sort(a) - np.sort(b)))


def test_axis_profile_tells_an_evenly_filled_axis_from_a_gaussian_one():
    rng = np.random.default_rng(2)
    n = 2000
    rectangle = rng.uniform(-1, 1, size=(n, 2)) * [300.0, 100.0]
    # the same extents, evenly filled along the long axis and a Gaussian along the short one
    half_cloud = np.c_[rng.uniform(-1, 1, n) * 300.0, rng.normal(size=n) * 100.0 / np.sqrt(3)]
    distances = geometry.axis_profile_distances(rectangle, half_cloud)
    # independent computation: the profiles along x and y, standardised, compared by their order statistics
    standardised = [(p - p.mean(0)) / p.std(0) for p in (rectangle, half_cloud)]
    for axis in range(2):
        expected = min(_sorted_wasserstein(standardised[0][:, axis], standardised[1][:, axis]),
                       _sorted_wasserstein(standardised[0][:, axis], -standardised[1][:, axis]))
        assert distances[axis] == pytest.approx(expected, abs=0.01)  # the principal axes are x and y up to sampling
    assert distances[0] < 0.05 < 0.1 < distances[1]
    # rotation, reflection, size, position and a flat z column change nothing
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = np.c_[(half_cloud @ rotation) * [-2.5, 2.5] + 40.0, np.zeros(n)]
    assert geometry.axis_profile_distances(rectangle, moved) == pytest.approx(distances, abs=1e-9)
    values, how = geometry.shape_metrics(rectangle, half_cloud, 1000, 0)
    assert values["axis_profile_wasserstein_worst"] == pytest.approx(distances.max())
    assert how["axis_profile_wasserstein_worst"]["per_axis"] == pytest.approx(list(distances))
    assert geometry.shape_metrics(rectangle, rectangle[::-1] * 0.5, 1000, 0)[0]["axis_profile_wasserstein_worst"] < 1e-9
    assert metric_direction("axis_profile_wasserstein_worst") == "lower"


def _naive_energy(a, b):
    ab = np.mean([np.linalg.norm(x - y) for x in a for y in b])
    aa = np.mean([np.linalg.norm(x - y) for i, x in enumerate(a) for j, y in enumerate(a) if i != j])
    bb = np.mean([np.linalg.norm(x - y) for i, x in enumerate(b) for j, y in enumerate(b) if i != j])
    return 2 * ab - aa - bb


def test_energy_distance_matches_the_naive_double_sum():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(50, 3)) + 0.5
    assert distribution.energy_distance(a, b, 1000, 0) == pytest.approx(_naive_energy(a, b), rel=1e-9)
    same = distribution.energy_distance(rng.normal(size=(800, 3)), rng.normal(size=(800, 3)), 1000, 0)
    assert abs(same) < 0.02 < distribution.energy_distance(a, b, 1000, 0)


def test_knn_two_sample_accuracy_separates_shifted_sets_only():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 5)), rng.normal(size=(500, 5))
    assert abs(distribution.knn_two_sample_accuracy(a, b, 15, 2000, 0) - 0.5) < 0.06
    assert distribution.knn_two_sample_accuracy(a, b + 3.0, 15, 2000, 0) > 0.97


def test_composition_zero_fraction_and_std_ratio():
    types = ["a", "b", "c"]
    assert distribution.composition_l1(np.array(["a", "a", "b", "b"]), np.array(["a", "b", "c", "c"]), types) == pytest.approx(1.0)
    x = np.array([[0.0, 2.0], [0.05, 4.0], [3.0, 0.0], [1.0, 6.0]])
    assert distribution.zero_fraction(x) == pytest.approx(3 / 8)
    assert distribution.std_ratio_median(x, x * np.array([2.0, 0.5])) == pytest.approx(1.25)


def test_joint_reference_rows_rank_a_real_slice_above_noise(starmap_dir):
    """On real STARmap slices: a real training slice is much closer to the test slice than shuffled
    noise is, by every distribution metric, and the generated-cell classifier types real cells well."""
    from alphastomics.io.shards import load_slice

    ids = ["20180417_BZ5_control", "20180419_BZ9_control", "20180424_BZ14_control"]
    slices = [load_slice(starmap_dir, s) for s in ids]
    reference = [ReferenceSlice(s.slice_id, s.expression, s.coords[:, :2], s.cell_types.astype(object)) for s in slices[:2]]
    test = slices[2]
    rng = np.random.default_rng(0)
    # "generated": expression with genes shuffled independently across cells, coordinates squeezed to a line
    noise = np.stack([rng.permutation(col) for col in test.expression.T], axis=1)
    line = np.c_[test.coords[:, 0], np.full(len(test.coords), test.coords[0, 1])]
    rows = joint_rows(test.expression, test.coords[:, :2], test.cell_types.astype(object), noise, line, reference,
                      n_pcs=30, max_cells=2000, label_k=15, morans_k=10, permutations=20, shape_pairs=20000, seed=0)
    generated, real = rows["generated"][0], rows["real:20180417_BZ5_control"][0]
    # energy distance is blind to the shuffle (same marginals): the two-sample classifier is not
    assert real["expr_knn_two_sample_accuracy"] < generated["expr_knn_two_sample_accuracy"] - 0.1
    assert real["cell_type_composition_l1"] < generated["cell_type_composition_l1"]
    assert generated["extent_ratio_axis2"] < 0.05 < 0.7 < real["extent_ratio_axis2"]
    assert real["morans_i_corr"] > 0.5
    assert generated["cell_type_classifier_accuracy_on_test"] > 0.5

    # the like-for-like composition: both slices typed by the same classifier, by hand
    typer = CellTyper(reference, 30, 15, 0)
    types = sorted(set(typer.types) | {str(t) for t in test.cell_types})
    test_typed, real_typed = typer.predict(test.expression), typer.predict(reference[0].expression)
    by_hand = sum(abs(np.mean(real_typed == t) - np.mean(test_typed == t)) for t in types)
    assert real["cell_type_composition_l1_typed"] == pytest.approx(by_hand)
    same = joint_rows(test.expression, test.coords[:, :2], test.cell_types.astype(object), test.expression, test.coords[:, :2],
                      reference, n_pcs=30, max_cells=2000, label_k=15, morans_k=10, permutations=20, shape_pairs=20000, seed=0)
    assert same["generated"][0]["cell_type_composition_l1_typed"] == 0.0
    assert same["generated"][0]["cell_type_composition_l1"] > 0.1  # the classifier's own errors, on true cells
    # ... which every joint table reports as the floor of that figure
    floor = rows["generated"][0]["cell_type_classifier_composition_l1_on_test"]
    assert floor == pytest.approx(same["generated"][0]["cell_type_composition_l1"])
    assert metric_direction("cell_type_classifier_composition_l1_on_test") is None  # the instrument's, not a score

    # a joint sample's drawn types: real cells drawn with their own labels are typed as often as the
    # classifier types real cells; the same labels in another order keep the composition, not the match
    labels = test.cell_types.astype(object)
    for drawn, composition in ((labels, 0.0), (labels[::-1], 0.0), (np.full(len(labels), "Astro", dtype=object), None)):
        rows = joint_rows(test.expression, test.coords[:, :2], labels, test.expression, test.coords[:, :2], reference,
                          n_pcs=30, max_cells=2000, label_k=15, morans_k=10, permutations=20, shape_pairs=20000, seed=0,
                          drawn_types=drawn)
        values = rows["generated"][0]
        assert values["cell_type_drawn_accuracy"] == pytest.approx(np.mean(typer.predict(test.expression) == drawn.astype(str)))
        # ..._expected: real cells of the drawn types, typed as often as the test cells are. Drawn with
        # the test slice's own labels, that is the test cells typed; all drawn as Astro, its Astro cells typed
        if composition is not None:
            assert values["cell_type_drawn_composition_l1"] == pytest.approx(composition, abs=1e-12)
            assert values["cell_type_drawn_composition_l1_expected"] == pytest.approx(
                values["cell_type_classifier_composition_l1_on_test"], abs=1e-12)
        else:
            assert values["cell_type_drawn_composition_l1"] == pytest.approx(2 * (1 - np.mean(labels.astype(str) == "Astro")))
            known = np.array([t is not None for t in labels])
            true_labels, typed = labels[known].astype(str), typer.predict(test.expression)[known]
            astro_typed = typed[true_labels == "Astro"]
            by_hand = sum(abs(np.mean(astro_typed == t) - np.mean(true_labels == t)) for t in types)
            assert values["cell_type_drawn_composition_l1_expected"] == pytest.approx(by_hand)
    assert rows["generated"][0]["cell_type_drawn_accuracy"] < 0.2
    assert "cell_type_drawn_accuracy" not in same["generated"][0]  # no drawn types, no figure
    assert metric_direction("cell_type_drawn_composition_l1_expected") is None
