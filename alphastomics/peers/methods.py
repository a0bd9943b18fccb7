"""One function per (method, mode): PeerInputs -> sample AnnData (alphastomics.peers.common)."""

from __future__ import annotations

import anndata as ad

from alphastomics.peers import baselines
from alphastomics.peers.common import PeerInputs, sample_anndata


def run_method(method: str, mode: str, inputs: PeerInputs, seed: int = 0, checkpoint: str | None = None,
               options: dict | None = None) -> ad.AnnData:
    options = dict(options or {})
    extra = {"seed": seed, "method_options": {k: v for k, v in options.items()}} if options else {"seed": seed}
    if (method, mode) == ("random", "expr_to_pos"):
        coords = baselines.random_positions(inputs.test.coords[:, : inputs.n_dims], seed)
        return sample_anndata(inputs, mode, method, coordinates=coords, extra=extra)
    if (method, mode) == ("oracle", "expr_to_pos"):
        return sample_anndata(inputs, mode, method, coordinates=baselines.oracle_positions(inputs, seed=seed, **options), extra=extra)
    if (method, mode) == ("celery", "expr_to_pos"):
        from alphastomics.peers.celery import celery_positions

        coordinates, run = celery_positions(inputs, seed=seed, **options)
        return sample_anndata(inputs, mode, method, coordinates=coordinates, extra={**extra, "method_run": run})
    if (method, mode) == ("novosparc", "expr_to_pos"):
        from alphastomics.peers.novosparc_peer import novosparc_positions

        coordinates, run = novosparc_positions(inputs, seed=seed, **options)
        return sample_anndata(inputs, mode, method, coordinates=coordinates, extra={**extra, "method_run": run})
    if (method, mode) == ("knn", "pos_to_expr"):
        return sample_anndata(inputs, mode, method, expression=baselines.knn_expression_at_positions(inputs, **options), extra=extra)
    if (method, mode) == ("knn", "impute"):
        return sample_anndata(inputs, mode, method, expression=baselines.knn_impute(inputs, seed=seed, **options), extra=extra)
    if (method, mode) == ("tangram", "impute"):
        from alphastomics.peers.tangram_peer import tangram_impute

        expression, run = tangram_impute(inputs, seed=seed, **options)
        return sample_anndata(inputs, mode, method, expression=expression, extra={**extra, "method_run": run})
    if (method, mode) == ("mimyr", "joint"):
        from alphastomics.peers.mimyr_peer import mimyr_section

        return mimyr_section(inputs, seed=seed)
    measured = inputs.test.gene_mask.astype(bool)
    if (method, mode) == ("pca", "domains"):
        return sample_anndata(inputs, mode, method, embedding=baselines.pca_embedding(inputs.test.expression[:, measured], seed=seed), extra=extra)
    if (method, mode) == ("graphst", "domains"):
        from alphastomics.peers.graphst import graphst_embedding

        embedding = graphst_embedding(inputs.test.expression[:, measured], inputs.test.coords[:, : inputs.n_dims], seed=seed, **options)
        return sample_anndata(inputs, mode, method, embedding=embedding, extra=extra)
    if (method, mode) == ("alphastomics", "domains"):
        if not checkpoint:
            raise ValueError("the alphastomics embedding needs --checkpoint (the model file)")
        from alphastomics.checkpoint import load_model
        from alphastomics.extract import embed_slice

        model = load_model(checkpoint, "cpu")
        embedding, how = embed_slice(model, inputs.test, True, True, seed)
        extra = {**extra, "embedding": how, "checkpoint_sha256": model.sha256}
        return sample_anndata(inputs, mode, method, embedding=embedding, extra=extra)
    raise ValueError(f"method {method!r} has no {mode!r} mode")
