"""Coordinate metrics: Procrustes disparity, RSSD after the best rotation, and pairwise-distance metrics.

Reflections are allowed in every alignment here: ``scipy.spatial.procrustes`` allows them, and a
model trained on pairwise distances cannot tell a slice from its mirror image, so penalising the
mirror image would score an arbitrary choice rather than the geometry.

The pairwise-distance metrics cost O(n^2) in the number of points they are given; callers pass a
random sample of cells for big slices. They never hold an n x n matrix: rows are processed in
blocks of ``rows_per_block``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import procrustes
from scipy.spatial.distance import cdist, pdist
from scipy.stats import rankdata

from alphastomics.metrics.correlation import is_constant, scored_values


def procrustes_disparity(true: np.ndarray, generated: np.ndarray) -> float:
    """``scipy.spatial.procrustes`` disparity (translation, scale, rotation and reflection removed).

    A prediction collapsed onto one point cannot be aligned (scipy refuses it); it explains none of
    the true configuration, which is the maximal disparity 1.
    """
    true = np.asarray(true, dtype=np.float64)
    generated = np.asarray(generated, dtype=np.float64)
    if np.ptp(generated, axis=0).max() == 0:
        return 1.0
    return float(procrustes(true, generated)[2])


def kabsch_rssd(true: np.ndarray, generated: np.ndarray) -> tuple[float, np.ndarray]:
    """Root of the summed squared deviations after centring both sets and the best orthogonal map.

    No scaling: generated coordinates are already in source units. Returns (rssd, aligned
    generated coordinates in the true frame).
    """
    true = np.asarray(true, dtype=np.float64)
    generated = np.asarray(generated, dtype=np.float64)
    true_centre = true.mean(axis=0)
    true_centred = true - true_centre
    generated_centred = generated - generated.mean(axis=0)
    rotation, _ = orthogonal_procrustes(generated_centred, true_centred)
    aligned = generated_centred @ rotation
    return float(np.sqrt(((aligned - true_centred) ** 2).sum())), aligned + true_centre


def scale_to_unit_rms(points: np.ndarray) -> np.ndarray:
    """Centre the points and divide by their RMS distance to the centre (left as is when all coincide)."""
    centred = np.asarray(points, dtype=np.float64) - np.mean(points, axis=0)
    radius = np.sqrt(np.mean((centred * centred).sum(axis=1)))
    return centred / radius if radius > 0 else centred


def rank_rows(matrix: np.ndarray) -> np.ndarray:
    """Average ranks along each row, equal to ``scipy.stats.rankdata(matrix, axis=1)``.

    Distance rows rarely hold ties, so ordinal ranks from one argsort are used and rankdata (which
    is several times slower) only for the rows that do have ties.
    """
    n_rows, n_cols = matrix.shape
    order = np.argsort(matrix, axis=1)
    ranks = np.empty(matrix.shape, dtype=np.float64)
    ranks[np.arange(n_rows)[:, None], order] = np.arange(1, n_cols + 1, dtype=np.float64)
    sorted_values = np.take_along_axis(matrix, order, axis=1)
    tied = (np.diff(sorted_values, axis=1) == 0).any(axis=1)
    if tied.any():
        ranks[tied] = rankdata(matrix[tied], axis=1)
    return ranks


def pearson_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (a * b).sum(axis=1) / denominator
    corr[denominator == 0] = np.nan
    return np.clip(corr, -1.0, 1.0)


def _without_diagonal(block: np.ndarray, first_row: int) -> np.ndarray:
    """Drop each row's distance to itself (column ``first_row + r`` of row r)."""
    n_rows, n_cols = block.shape
    keep = np.ones(block.shape, dtype=bool)
    keep[np.arange(n_rows), first_row + np.arange(n_rows)] = False
    return block[keep].reshape(n_rows, n_cols - 1)


def contact_name(kind: str, quantile: float) -> str:
    """``contact_precision_q01`` for the 1% quantile, ``contact_f1_q10`` for 10%."""
    return f"contact_{kind}_q{quantile * 100:02g}"


def distance_metrics(
    true: np.ndarray, generated: np.ndarray, contact_quantiles: list[float], rows_per_block: int = 256
) -> tuple[dict[str, float], dict[str, dict], np.ndarray]:
    """Pairwise-distance metrics of two point sets in one pass over blocks of distance rows.

    Both sets are first scaled to unit RMS radius, so that the distance MSE and the contact
    threshold compare shapes, not units. Over all ordered pairs i != j:

    - ``distance_matrix_mse_unit_rms``: mean of (d_true - d_generated)^2;
    - ``distance_spearman_median``/``_mean``: per cell, Spearman correlation between its distances
      to all other cells in the true and in the generated set (LUNA's headline metric);
    - ``contact_precision_qXX``/``contact_f1_qXX``: a pair is in contact when its distance is at most
      the q-quantile of all true pairwise distances; the generated set uses the same threshold.
      Precision is 0 when the generated set has no contact (sklearn's zero_division=0).

    Returns (values, how, per-cell Spearman correlations).
    """
    a = scale_to_unit_rms(true)
    b = scale_to_unit_rms(generated)
    n = a.shape[0]
    true_pair_distances = pdist(a)
    thresholds = np.quantile(true_pair_distances, contact_quantiles, overwrite_input=True)
    del true_pair_distances

    squared_error = 0.0
    true_contacts = np.zeros(len(thresholds))
    generated_contacts = np.zeros(len(thresholds))
    both_contacts = np.zeros(len(thresholds))
    row_spearman = np.empty(n)
    true_row_constant = np.zeros(n, dtype=bool)
    generated_row_constant = np.zeros(n, dtype=bool)
    for start in range(0, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        true_rows = _without_diagonal(cdist(a[start:stop], a), start)
        generated_rows = _without_diagonal(cdist(b[start:stop], b), start)
        squared_error += float(((true_rows - generated_rows) ** 2).sum())
        for q, threshold in enumerate(thresholds):
            true_in = true_rows <= threshold
            generated_in = generated_rows <= threshold
            true_contacts[q] += true_in.sum()
            generated_contacts[q] += generated_in.sum()
            both_contacts[q] += (true_in & generated_in).sum()
        row_spearman[start:stop] = pearson_per_row(rank_rows(true_rows), rank_rows(generated_rows))
        true_row_constant[start:stop] = is_constant(true_rows, 1)
        generated_row_constant[start:stop] = is_constant(generated_rows, 1)

    n_pairs = n * (n - 1)
    common = {"n_cells": n, "scaling": "both point sets centred and scaled to unit RMS radius"}
    values: dict[str, float] = {"distance_matrix_mse_unit_rms": squared_error / n_pairs if n_pairs else float("nan")}
    how: dict[str, dict] = {"distance_matrix_mse_unit_rms": {"formula": "mean over ordered pairs i != j of (d_true - d_generated)^2", **common}}
    # a cell whose generated distances are all equal (a collapsed cloud) has an undefined
    # correlation: it counts as 0, not left out (see alphastomics.metrics.correlation)
    scores, counts = scored_values(row_spearman, true_row_constant, generated_row_constant, "cell")
    for summary, fn in (("median", np.median), ("mean", np.mean)):
        name = f"distance_spearman_{summary}"
        values[name] = float(fn(scores)) if scores.size else float("nan")
        how[name] = {
            "formula": f"{summary} over cells of the Spearman correlation between the cell's distances to all other cells, true vs generated",
            **counts,
            "undefined": "true distances all equal: left out; only the generated ones all equal: counted as 0",
            **common,
        }
    for q, quantile in enumerate(contact_quantiles):
        precision = both_contacts[q] / generated_contacts[q] if generated_contacts[q] else 0.0
        f1_denominator = true_contacts[q] + generated_contacts[q]
        contact_how = {
            "quantile": quantile,
            "threshold_unit_rms": float(thresholds[q]),
            "contact": "pair distance <= the quantile of true pairwise distances (same threshold for generated)",
            "n_true_contact_pairs": int(true_contacts[q] // 2),
            "n_generated_contact_pairs": int(generated_contacts[q] // 2),
            **common,
        }
        values[contact_name("precision", quantile)] = float(precision)
        how[contact_name("precision", quantile)] = {"zero_division": 0.0, **contact_how}
        values[contact_name("f1", quantile)] = float(2 * both_contacts[q] / f1_denominator) if f1_denominator else 0.0
        how[contact_name("f1", quantile)] = {"zero_division": 0.0, **contact_how}
    return values, how, row_spearman


def coordinate_metrics(true: np.ndarray, generated: np.ndarray) -> tuple[dict[str, float], dict[str, dict]]:
    """Procrustes disparity and Kabsch RSSD over all cells (both O(n))."""
    n, dims = np.shape(true)
    rssd, _ = kabsch_rssd(true, generated)
    values = {"procrustes_disparity": procrustes_disparity(true, generated), "rssd_kabsch": rssd}
    how = {
        "procrustes_disparity": {
            "implementation": "scipy.spatial.procrustes (both sets centred and scaled to unit Frobenius norm; rotation and reflection allowed)",
            "n_cells": n,
            "n_dims": dims,
        },
        "rssd_kabsch": {
            "formula": "sqrt(sum over cells of squared distance) after centring both sets and the best orthogonal map of the generated set",
            "reflections_allowed": True,
            "scaling": "none (source units)",
            "rms_deviation_per_cell": rssd / np.sqrt(n) if n else float("nan"),
            "n_cells": n,
            "n_dims": dims,
        },
    }
    return values, how


def extent_ratios(true: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Singular values of the centred generated coordinates over those of the centred true ones,
    principal axis by principal axis (largest first), in source units: 1 everywhere for a tissue of
    the right size and shape, a small ratio for an axis that collapsed."""
    s_true = np.linalg.svd(np.asarray(true, np.float64) - np.mean(true, axis=0), compute_uv=False)
    s_generated = np.linalg.svd(np.asarray(generated, np.float64) - np.mean(generated, axis=0), compute_uv=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s_true > 0, s_generated / s_true, np.nan)


def principal_axis_profiles(points: np.ndarray) -> np.ndarray:
    """(n, d) coordinates of the centred points along their principal axes (largest spread first),
    each divided by its own standard deviation: the shape of the tissue's profile along each axis,
    whatever its size. Axes with no spread (z of a 2D slice) are dropped."""
    centred = np.asarray(points, np.float64) - np.mean(points, axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    keep = singular > 1e-9 * max(float(singular.max(initial=0.0)), 1e-300)
    projected = centred @ axes[keep].T
    return projected / projected.std(axis=0)


def axis_profile_distances(true: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """1-D Wasserstein distance, principal axis by principal axis, between the standardised profiles
    (:func:`principal_axis_profiles`) of the true and of the generated points; the sign of an axis
    is arbitrary, so the closer of the two mirror images counts. 0 for the same profile, about 0.14
    between a Gaussian and a uniform profile (a cloud where the tissue is evenly filled)."""
    from scipy.stats import wasserstein_distance

    p_true, p_generated = principal_axis_profiles(true), principal_axis_profiles(generated)
    axes = min(p_true.shape[1], p_generated.shape[1])
    return np.array([min(wasserstein_distance(p_true[:, k], p_generated[:, k]), wasserstein_distance(p_true[:, k], -p_generated[:, k]))
                     for k in range(axes)])


def sampled_pair_distances(points: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Distances of ``n_pairs`` uniformly drawn pairs of distinct points."""
    n = len(points)
    i = rng.integers(0, n, n_pairs)
    j = rng.integers(0, n - 1, n_pairs)
    j = j + (j >= i)
    return np.sqrt(((np.asarray(points[i], np.float64) - points[j]) ** 2).sum(1))


def distance_distribution_distance(true: np.ndarray, generated: np.ndarray, n_pairs: int, seed: int) -> float:
    """1-D Wasserstein distance between the pairwise distances of the true and of the generated
    points (``n_pairs`` random pairs each, drawn independently: no cell correspondence is needed),
    in units of the true RMS radius. 0 for a tissue of the same size and shape, ~0.5 for one twice
    too big or shrunk to half."""
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(seed)
    true = np.asarray(true, np.float64)
    radius = np.sqrt(np.mean(((true - true.mean(0)) ** 2).sum(1)))
    d_true = sampled_pair_distances(true, n_pairs, rng)
    d_generated = sampled_pair_distances(np.asarray(generated, np.float64), n_pairs, rng)
    return float(wasserstein_distance(d_true, d_generated) / radius) if radius > 0 else float("nan")


def nearest_neighbour_distances(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    points = np.asarray(points, np.float64)
    return cKDTree(points).query(points, k=2)[0][:, 1]


DENSITY_K = 10


def local_density_spread(points: np.ndarray, k: int = DENSITY_K) -> float:
    """Standard deviation over cells of log(distance to the k-th nearest other cell): how unevenly
    the cells fill the tissue (it does not depend on the tissue's size). Real sections, whose cells
    pack about evenly up to a sharp edge, score near uniform points (about 0.18 in a square); a
    Gaussian cloud, dense in its middle and thinning to a fuzzy rim, scores well above them (about
    0.5 in 2D, 0.35-0.38 in 3D for 760-2,300 points). The bundled and benchmark sections' own
    figures: docs/findings/model.md."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, np.float64)
    k = min(k, len(points) - 1)
    if k < 1:
        return float("nan")
    radius = cKDTree(points).query(points, k=k + 1)[0][:, k]
    radius = radius[radius > 0]  # cells piled onto k others have no defined density
    return float(np.log(radius).std()) if radius.size > 1 else float("nan")


def spacing_metrics(true: np.ndarray, generated: np.ndarray) -> tuple[dict[str, float], dict[str, dict]]:
    """Does generated tissue have the cell spacing of real tissue: no piles of overlapping cells, no
    gaps. Median nearest-neighbour distance, generated over true, and the 1-D Wasserstein distance
    between the two nearest-neighbour distance distributions in units of the true median.

    And is it filled as evenly as real tissue: a generated slice can have the right extent on every
    axis and the right distance distribution while being a Gaussian cloud, dense in the middle and
    sparse at the rim (the demo models' joint tissue on STARmap BZ14 and BDTNP slab2), which no
    other shape metric flags; the spread of local density, generated over true, does.
    """
    from scipy.stats import wasserstein_distance

    d_true, d_generated = nearest_neighbour_distances(true), nearest_neighbour_distances(generated)
    median = float(np.median(d_true))
    spread_true = local_density_spread(true)
    values = {
        "nn_distance_ratio_median": float(np.median(d_generated) / median) if median > 0 else float("nan"),
        "nn_distance_wasserstein_rel": float(wasserstein_distance(d_true, d_generated) / median) if median > 0 else float("nan"),
        "density_spread_ratio": local_density_spread(generated) / spread_true if spread_true > 0 else float("nan"),
    }
    how = {
        "nn_distance_ratio_median": {"formula": "median distance of each generated cell to its nearest other cell / the same for true cells"},
        "nn_distance_wasserstein_rel": {"formula": "1-D Wasserstein distance between nearest-neighbour distances of generated and true cells / "
                                                   "the true median nearest-neighbour distance"},
        "density_spread_ratio": {"formula": f"sd over cells of log(distance to the {DENSITY_K}-th nearest cell), generated / true: "
                                            "1 for tissue filled as evenly as the true one, above 1 for a cloud dense in the middle "
                                            "and sparse at the rim", "k": DENSITY_K, "true_spread": spread_true},
    }
    return values, how


def shape_metrics(true: np.ndarray, generated: np.ndarray, n_pairs: int, seed: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Extent ratios per principal axis, the distance-distribution distance and the cell spacing;
    none needs a cell correspondence."""
    ratios = extent_ratios(true, generated)
    values: dict[str, float] = {f"extent_ratio_axis{k + 1}": float(r) for k, r in enumerate(ratios)}
    how: dict[str, dict] = {name: {
        "formula": "k-th singular value of the centred generated coordinates / k-th singular value of the centred true ones",
        "units": "source units, no scaling or alignment", "axis": k + 1} for k, name in enumerate(values)}
    finite = ratios[np.isfinite(ratios) & (ratios > 0)]
    values["extent_ratio_worst"] = float(finite[np.argmax(np.abs(np.log(finite)))]) if finite.size else float("nan")
    how["extent_ratio_worst"] = {"formula": "the extent ratio farthest from 1 (in log scale) over principal axes"}
    # Each axis can lie within bounds while the shape is not the tissue's: a layout stretched along
    # the axis the genes inform and squeezed along the other can keep each ratio within bounds and
    # even rank distances better (stretching that axis ranks distances along it), so the ratio of the
    # two is a metric of its own.
    values["extent_ratio_anisotropy"] = float(finite.max() / finite.min()) if finite.size else float("nan")
    how["extent_ratio_anisotropy"] = {"formula": "largest / smallest extent ratio over principal axes: 1 for the true shape "
                                                 "at any size, above 1 for a tissue stretched along some axis"}
    # Each axis can have the right extent while its profile is not the tissue's: the demo models laid
    # STARmap BZ14 out evenly along the axis its genes inform and as a Gaussian along the other.
    profiles = axis_profile_distances(true, generated)
    values["axis_profile_wasserstein_worst"] = float(profiles.max()) if profiles.size else float("nan")
    how["axis_profile_wasserstein_worst"] = {
        "formula": "largest over principal axes of the 1-D Wasserstein distance between the true and the generated "
                   "coordinates along the axis, each standardised by its own sd (the closer mirror image)",
        "per_axis": [float(v) for v in profiles]}
    values["distance_wasserstein_unit_rms"] = distance_distribution_distance(true, generated, n_pairs, seed)
    how["distance_wasserstein_unit_rms"] = {
        "formula": "1-D Wasserstein distance between pairwise distances of true and generated coordinates / true RMS radius",
        "pairs": f"{n_pairs} uniformly drawn pairs per set, drawn independently", "seed": seed}
    spacing_values, spacing_how = spacing_metrics(true, generated)
    values.update(spacing_values)
    how.update(spacing_how)
    return values, how


def placement_metrics(true: np.ndarray, generated: np.ndarray, axis: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Is a section generated where it lies, no alignment (a shared frame whose sections carry a place
    along a cutting axis): the fraction of generated cells inside the true section's range along the
    axis, and how far each true cell is from its nearest generated cell, in units of the true cells'
    median spacing (about 1 where every true cell has a generated cell beside it, large where the
    generated section misses part of the true one)."""
    from scipy.spatial import cKDTree

    true, generated = np.asarray(true, np.float64), np.asarray(generated, np.float64)
    low, high = true[:, axis].min(), true[:, axis].max()
    inside = float(np.mean((generated[:, axis] >= low) & (generated[:, axis] <= high)))
    to_generated = cKDTree(generated).query(true, k=1)[0]
    spacing = float(np.median(nearest_neighbour_distances(true)))
    values = {
        "place_inside_fraction": inside,
        "place_true_to_generated_median": float(np.median(to_generated)),
        "place_true_to_generated_spacing": float(np.median(to_generated) / spacing) if spacing > 0 else float("nan"),
    }
    how = {
        "place_inside_fraction": {"formula": "fraction of generated cells within the true section's range along the cutting axis",
                                  "axis": "xyz"[axis], "range": [float(low), float(high)]},
        "place_true_to_generated_median": {"formula": "median over true cells of the distance to the nearest generated cell, "
                                                      "no alignment", "units": "source units"},
        "place_true_to_generated_spacing": {"formula": "place_true_to_generated_median / median nearest-neighbour distance of the "
                                                       "true cells", "true_spacing": spacing},
    }
    return values, how
