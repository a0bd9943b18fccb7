"""Peer methods, run in the same pipeline as AlphaSTomics on the same held-out slices and scored
by the same metrics. Each is a plain function of the held-out slice and the training slices
(``common.PeerInputs``) whose result is written as a sample file in the format of the model's
sampler (``common.sample_anndata``), so ``alphastomics evaluate`` and the report treat every
method alike. ``alphastomics peer`` (``alphastomics.peers.run``) runs one, under a time limit,
and always writes a status record.

| mode | method | what |
|---|---|---|
| expr_to_pos | ``novosparc`` | novoSpaRc de novo reconstruction (package ``novosparc``) to its convergence, onto a grid with the training slices' shape |
| expr_to_pos | ``celery`` | CeLEry (package ``CeLEryPy``) as its tutorial runs it, training slices aligned to a common frame |
| expr_to_pos | ``random`` | lower bound: coordinates of a randomly permuted copy of the slice |
| expr_to_pos | ``oracle`` | upper reference: coordinates regressed from expression on the held-out slice's own cells (cross-validated) |
| pos_to_expr | ``knn`` | shared frame: mean expression of the k nearest training cells in that frame |
| impute | ``tangram`` | Tangram (package ``tangram-sc``, CPU, its documented defaults): training cells mapped onto the slice through the shared genes |
| impute | ``knn`` | SpaGE-like kNN imputation in shared-gene expression space |
| joint | ``mimyr`` | MIMYR (package ``mimyr``): an unseen section of an Allen-CCF mouse-brain atlas; elsewhere a status that names the input it lacks |
| domains | ``graphst`` | GraphST-style GCN encoder (k = 3 spatial graph, reconstruction + DGI loss) |
| domains | ``pca`` | lower bound: PCA of expression |
| domains | ``alphastomics`` | the model's per-cell embedding (``alphastomics extract``), needs ``--checkpoint`` |

The training-mean predictor (pos_to_expr, impute) and real training slices (joint) are reference
rows that ``alphastomics evaluate --reference`` adds to every table (alphastomics.references).
"""

from __future__ import annotations

# method -> modes it runs in
PEER_MODES: dict[str, tuple[str, ...]] = {
    "novosparc": ("expr_to_pos",),
    "celery": ("expr_to_pos",),
    "random": ("expr_to_pos",),
    "oracle": ("expr_to_pos",),
    "knn": ("pos_to_expr", "impute"),
    "tangram": ("impute",),
    "mimyr": ("joint",),
    "graphst": ("domains",),
    "pca": ("domains",),
    "alphastomics": ("domains",),
}

# The package each method runs through, where it is not this one (shown when it is not installed).
PEER_PACKAGES = {"novosparc": "novosparc", "tangram": "tangram-sc", "celery": "CeLEryPy", "mimyr": "mimyr"}

# Lower bounds: rows that give context, which AlphaSTomics must beat; reported beside the peers.
LOWER_BOUNDS = {"random", "pca", "training_mean"}

# Upper references: given what no other method is (the held-out slice's own coordinates), so shown
# beside the others for scale, never ranked nor judged against.
ORACLES = ("oracle",)
