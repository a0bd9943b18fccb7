"""CeLEry-style supervised regressor (expr_to_pos): an MLP from expression to coordinates,
trained on the training slices after aligning them to a common frame.

In a ``shared`` frame the training slices already are in one frame. In ``per_slice`` frames
(sections of different animals) each slice is centred and scaled to unit RMS radius, and every
slice after the first is rotated (reflections allowed) onto the first: each of its cells is paired
with the mean position of its nearest cells in expression in the first slice, and the orthogonal
Procrustes rotation of those pairs is applied (repeated a few times). Predicted coordinates are
brought back to source units with the training slices' cell density.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from alphastomics.peers.common import PeerInputs, standardise


def _unit(coords: np.ndarray) -> tuple[np.ndarray, float]:
    centred = coords - coords.mean(0)
    radius = float(np.sqrt((centred ** 2).sum(1).mean())) or 1.0
    return centred / radius, radius


def align_slices(expressions: list[np.ndarray], coords: list[np.ndarray], k: int = 10, iterations: int = 3,
                 n_components: int = 20, seed: int = 0) -> list[np.ndarray]:
    """Unit-scaled coordinates of every slice in the frame of the first (see the module docstring)."""
    pooled = np.concatenate(expressions).astype(np.float64)
    standardised = standardise(pooled, *[e.astype(np.float64) for e in expressions])[1:]
    n = max(1, min(n_components, pooled.shape[1], pooled.shape[0] - 1))
    pca = PCA(n_components=n, random_state=seed).fit(np.concatenate(standardised))
    space = [pca.transform(e) for e in standardised]
    aligned = [_unit(c)[0] for c in coords]
    reference = aligned[0]
    finder = NearestNeighbors(n_neighbors=min(k, len(reference))).fit(space[0])
    for i in range(1, len(aligned)):
        _, index = finder.kneighbors(space[i])
        target = reference[index].mean(1)
        current = aligned[i]
        for _ in range(iterations):
            rotation, _ = orthogonal_procrustes(current, target)
            current = current @ rotation
        aligned[i] = current
    return aligned


def celery_positions(inputs: PeerInputs, hidden: tuple[int, ...] = (128, 64), epochs: int = 200, lr: float = 1e-3,
                     weight_decay: float = 1e-4, seed: int = 0) -> np.ndarray:
    """(N, d) coordinates of the held-out slice's cells predicted from their expression."""
    import torch

    d = inputs.n_dims
    genes = inputs.shared
    expressions = [s.expression[:, genes] for s in inputs.train]
    coords = [s.coords[:, :d].astype(np.float64) for s in inputs.train]
    if inputs.frame == "shared":
        targets = np.concatenate(coords)
        centre, scale = targets.mean(0), targets.std(0)
        scale[scale < 1e-8] = 1.0
        y = (targets - centre) / scale
    else:
        y = np.concatenate(align_slices(expressions, coords, seed=seed))
    x_train, x_test = standardise(np.concatenate(expressions).astype(np.float64), inputs.test.expression[:, genes].astype(np.float64))

    torch.manual_seed(seed)
    layers, width = [], x_train.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, d))
    net = torch.nn.Sequential(*layers)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    batch = 256
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        predicted = net(torch.tensor(x_test, dtype=torch.float32)).numpy().astype(np.float64)
    if inputs.frame == "shared":
        return predicted * scale + centre
    # unit RMS radius -> source units at the training slices' density (radius grows as sqrt(N) in 2D, cbrt(N) in 3D)
    radii = [_unit(c)[1] / len(c) ** (1 / d) for c in coords]
    return predicted * float(np.mean(radii)) * len(x_test) ** (1 / d)
