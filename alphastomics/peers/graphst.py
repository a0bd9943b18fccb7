"""A GraphST-style spatial embedding (domains), written here: one GCN layer on a spatial kNN
graph (k = 3, symmetric, self-loops, symmetric normalisation) encodes standardised expression; a
GCN decoder reconstructs expression (MSE); a DGI contrastive loss tells each cell's embedding,
paired with the summary of its graph neighbourhood, from the embedding of a corrupted view whose
expression rows were shuffled over the cells (as GraphST: 10 x reconstruction + 1 x contrastive)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from alphastomics.peers.common import standardise


def spatial_graph(coords: np.ndarray, k: int = 3) -> sp.csr_matrix:
    """Symmetric kNN adjacency (self excluded), as a sparse 0/1 matrix."""
    n = len(coords)
    k = max(1, min(k, n - 1))
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords)
    rows = np.repeat(np.arange(n), k)
    adjacency = sp.csr_matrix((np.ones(n * k), (rows, index[:, 1:].ravel())), shape=(n, n))
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    return adjacency


def _torch_sparse(matrix: sp.spmatrix):
    import torch

    coo = matrix.tocoo()
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(coo.data.astype(np.float32)), coo.shape,
                                   check_invariants=True).coalesce()


def graphst_embedding(expression: np.ndarray, coords: np.ndarray, dim: int = 64, k: int = 3, epochs: int = 200,
                      lr: float = 1e-3, seed: int = 0) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    (x,) = standardise(np.asarray(expression, np.float64))
    adjacency = spatial_graph(np.asarray(coords, np.float64), k)
    with_self = adjacency + sp.eye(adjacency.shape[0])
    degree = np.asarray(with_self.sum(1)).ravel()
    norm = sp.diags(degree ** -0.5) @ with_self @ sp.diags(degree ** -0.5)
    mean_neighbours = sp.diags(1 / degree) @ with_self  # readout: mean over each cell's neighbourhood
    A, R = _torch_sparse(norm), _torch_sparse(mean_neighbours)
    features = torch.tensor(x, dtype=torch.float32)

    encoder = torch.nn.Linear(features.shape[1], dim, bias=False)
    decoder = torch.nn.Linear(dim, features.shape[1], bias=False)
    discriminator = torch.nn.Bilinear(dim, dim, 1)
    params = [*encoder.parameters(), *decoder.parameters(), *discriminator.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    bce = torch.nn.BCEWithLogitsLoss()
    n = features.shape[0]
    ones, zeros = torch.ones(n, 1), torch.zeros(n, 1)

    def encode(f):
        return torch.sparse.mm(A, encoder(f))

    for _ in range(epochs):
        z = encode(features)
        reconstruction = torch.sparse.mm(A, decoder(z))
        corrupted = encode(features[torch.randperm(n, generator=generator)])
        emb, emb_c = torch.relu(z), torch.relu(corrupted)
        summary = torch.sigmoid(torch.nn.functional.normalize(torch.sparse.mm(R, emb), dim=1))
        summary_c = torch.sigmoid(torch.nn.functional.normalize(torch.sparse.mm(R, emb_c), dim=1))
        contrastive = (bce(discriminator(emb, summary), ones) + bce(discriminator(emb_c, summary), zeros)
                       + bce(discriminator(emb_c, summary_c), ones) + bce(discriminator(emb, summary_c), zeros))
        loss = 10 * torch.nn.functional.mse_loss(reconstruction, features) + contrastive
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return encode(features).numpy().astype(np.float32)
