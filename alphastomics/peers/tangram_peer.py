"""Tangram (impute), through the ``tangram-sc`` package on CPU: the training cells are mapped
onto the held-out slice's cells through the genes both measure (the slice's held-out genes left
out), and the held-out genes are projected from the training cells through the mapping
(``tangram.project_genes``), as its documentation does. The projection is the mapped training
cells' expression summed with their mapping probabilities: each target cell's values scale with
the mapping mass it receives (Tangram's RNA-count density prior), so correlations are on the
data's footing and squared errors are not. (Dividing by that mass puts it on the data's scale but
removes the count cue and lowered per-gene Spearman on the bundled data, so the documented
projection is what competes; docs/findings/peers.md.)"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from alphastomics.peers.common import PeerInputs


def tangram_impute(inputs: PeerInputs, num_epochs: int = 1000, learning_rate: float = 0.1,
                   seed: int = 0) -> tuple[np.ndarray, dict]:
    """(N, G) imputed expression (the held-out genes' columns filled), and the run's settings.
    ``num_epochs`` and ``learning_rate`` are ``map_cells_to_space``'s documented defaults."""
    from importlib.metadata import version

    import anndata as ad
    import pandas as pd
    import tangram as tg
    import torch

    torch.manual_seed(seed)
    genes = np.asarray(inputs.test.genes)
    train_genes = inputs.shared | inputs.heldout
    for s in inputs.train:
        train_genes &= s.gene_mask.astype(bool)
    given = inputs.shared & ~inputs.heldout
    ad_sc = ad.AnnData(X=inputs.train_expression(train_genes), var=pd.DataFrame(index=genes[train_genes]))
    ad_sp = ad.AnnData(X=inputs.test.expression[:, given].astype(np.float32), var=pd.DataFrame(index=genes[given]))
    logging.getLogger("tangram").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        tg.pp_adatas(ad_sc, ad_sp, genes=list(genes[given]))
        mapping = tg.map_cells_to_space(ad_sc, ad_sp, mode="cells", device="cpu", num_epochs=num_epochs,
                                        learning_rate=learning_rate, random_state=seed, verbose=False)
        projected = tg.project_genes(mapping, ad_sc)
    logging.getLogger().setLevel(logging.INFO)
    values = np.asarray(projected.X.toarray() if hasattr(projected.X, "toarray") else projected.X, np.float32)
    column = {str(g).lower(): i for i, g in enumerate(projected.var_names)}
    out = np.zeros_like(inputs.test.expression, dtype=np.float32)
    for j, g in enumerate(genes):
        if inputs.heldout[j] and g.lower() in column:
            out[:, j] = values[:, column[g.lower()]]
    run = {"package": "tangram-sc", "package_version": version("tangram-sc"),
           "settings": {"function": "pp_adatas / map_cells_to_space / project_genes", "mode": "cells",
                        "num_epochs": num_epochs, "learning_rate": learning_rate, "device": "cpu",
                        "training_genes": int(given.sum())}}
    return out, run
