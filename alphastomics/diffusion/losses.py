"""Training losses: masked expression MSE, coordinate MSE and the pairwise-distance loss.

The coordinate MSE compares predicted and true x0 in the frame of the noisy input: the noise was
added to the true coordinates in that frame and the network is equivariant, so no alignment is
needed, and the prediction stays anchored to the orientation the sampler is building (a rigid-
invariant loss alone leaves each step free to rotate the tissue, and averaging differently rotated
predictions over the steps of a sampler shrinks it).

The distance loss compares all pairwise distances of predicted and true coordinates, so it is
invariant to rotations, reflections and translations of the prediction. It is exact up to
``exact_max_cells`` cells; above, an unbiased estimate keeps memory at O(N k):

    L = (1/P) [ sum_{pairs in K} e_ij + sum_{pairs not in K} e_ij ],   e_ij = (d^_ij - d_ij)^2

where K is the set of (unordered) k-nearest-neighbour pairs of the true coordinates, summed
exactly, and the second sum is estimated from M uniformly drawn pairs as (P/M) sum e_ij 1[ij not in K].
The kNN pairs carry the local structure with no sampling noise; the uniform pairs the global shape.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def expression_mse(pred, target, target_mask, node_mask) -> torch.Tensor:
    """Per example (B,), the mean squared error over real cells and the channels that carry a
    target (measured genes; magnitudes of expressed entries only). pred/target/target_mask (B, N, C)."""
    weight = node_mask[..., None].float() * target_mask.float()
    return ((pred.float() - target.float()) ** 2 * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1)


def position_mse(pred, target, node_mask, dim_mask) -> torch.Tensor:
    """Per example (B,), the mean over real cells and used axes of the squared coordinate error."""
    weight = node_mask[..., None].float() * dim_mask[:, None, :].float()
    return ((pred.float() - target.float()) ** 2 * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1)


def weighted_mean(per_example: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_b w_b l_b / (number of examples with w_b > 0): w selects and weights examples (0 = given modality)."""
    count = (weight > 0).sum().clamp(min=1)
    return (per_example * weight).sum() / count


def noise_level_weight(alpha_bar: torch.Tensor, weighting: str, gamma: float) -> torch.Tensor:
    """Weight of an x0 loss at each example's noise level.

    ``min_snr``: min(1 + SNR, gamma), SNR = alpha_bar / (1 - alpha_bar): the weight of a
    v-prediction loss (1 + SNR in x0 terms), truncated at ``gamma`` as in Min-SNR (Hang et al.
    2023), so steps near the data (fine detail) count up to ``gamma`` times more while noisy steps
    keep weight 1: they are where the model learns what is expressed where (the conditional mean),
    and Min-SNR's own min(SNR, gamma), which fades them out, loses that (docs/findings/model.md).
    ``uniform``: 1.
    """
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar).clamp(min=1e-8)
    return (1.0 + snr).clamp(max=gamma)


def _pair_distance(x, i, j):
    return (x[i] - x[j]).pow(2).sum(-1).add(1e-12).sqrt()


def exact_distance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over unordered pairs i < j of the squared difference of distances; pred/target (n, 3)."""
    n = pred.shape[0]
    d_pred = torch.cdist(pred.float().unsqueeze(0), pred.float().unsqueeze(0)).squeeze(0)
    d_true = torch.cdist(target.float().unsqueeze(0), target.float().unsqueeze(0)).squeeze(0)
    sq = (d_pred - d_true) ** 2
    # Diagonal is zero; each unordered pair appears twice in the full matrix.
    return sq.sum() / max(n * (n - 1), 1)


def knn_pair_keys(target: np.ndarray, k: int) -> np.ndarray:
    """Sorted unique keys min(i,j) * n + max(i,j) of the kNN pairs of ``target`` (n, 3)."""
    n = target.shape[0]
    k = min(k, n - 1)
    _, idx = cKDTree(target).query(target, k=k + 1, workers=-1)
    i = np.repeat(np.arange(n), k)
    j = idx[:, 1:].reshape(-1)
    keys = np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j)
    return np.unique(keys)


def sampled_distance_loss(
    pred: torch.Tensor, target: torch.Tensor, k: int, pairs_per_cell: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unbiased estimate of :func:`exact_distance_loss` in O(N k) memory; pred/target (n, 3)."""
    n = pred.shape[0]
    total_pairs = n * (n - 1) / 2
    knn_keys = torch.from_numpy(knn_pair_keys(target.detach().float().cpu().numpy(), k)).to(pred.device)
    ki, kj = knn_keys // n, knn_keys % n
    exact_part = ((_pair_distance(pred.float(), ki, kj) - _pair_distance(target.float(), ki, kj)) ** 2).sum()

    m = n * pairs_per_cell
    i = torch.randint(0, n, (m,), generator=generator).to(pred.device)
    j = torch.randint(0, n - 1, (m,), generator=generator).to(pred.device)
    j = j + (j >= i).long()  # uniform over j != i, hence uniform over unordered pairs
    keys = torch.minimum(i, j) * n + torch.maximum(i, j)
    # knn_keys is sorted: a binary search is much cheaper than isin's sort of all sampled keys.
    position = torch.searchsorted(knn_keys, keys).clamp_(max=knn_keys.numel() - 1)
    outside_knn = knn_keys[position] != keys
    e = (_pair_distance(pred.float(), i, j) - _pair_distance(target.float(), i, j)) ** 2
    sampled_part = (e * outside_knn).sum() * (total_pairs / m)
    return (exact_part + sampled_part) / total_pairs


def distance_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    node_mask: torch.Tensor,
    example_weight: torch.Tensor | None = None,
    exact_max_cells: int = 4096,
    k: int = 16,
    pairs_per_cell: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per example (B,), the distance loss; 0 (not computed) where ``example_weight`` is 0."""
    losses = []
    for b in range(pred.shape[0]):
        if example_weight is not None and float(example_weight[b]) == 0.0:
            losses.append(pred.new_zeros(()).float())
            continue
        n = int(node_mask[b].sum())
        p, t = pred[b, :n], target[b, :n]
        if n <= exact_max_cells:
            losses.append(exact_distance_loss(p, t))
        else:
            losses.append(sampled_distance_loss(p, t, k, pairs_per_cell, generator))
    return torch.stack(losses)
