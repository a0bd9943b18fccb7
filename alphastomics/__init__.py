"""AlphaSTomics: one diffusion model over gene expression and cell coordinates of spatial transcriptomics slices."""

__version__ = "0.1.0"

# What a model is trained for (each a regime of what is noised), and what a slice can be sampled in:
# the training modes plus ``impute`` (held-out genes of a slice generated, everything else given).
TRAINING_MODES = ("expr_to_pos", "pos_to_expr", "joint")
MODES = (*TRAINING_MODES, "impute")
# The modalities each sampling mode generates (the others are given).
GENERATED_BY_MODE = {"expr_to_pos": ["position"], "pos_to_expr": ["expression"], "joint": ["expression", "position"],
                     "impute": ["expression"]}
# Spatial domains / embeddings: no modality generated; a method gives each cell of a slice an
# embedding (obsm['alphastomics_embedding']), scored by the agreement of its clusters with the
# slice's cell types or domains. Written by embedding methods (alphastomics.peers), not sampled.
DOMAINS_MODE = "domains"
EVALUATION_MODES = (*MODES, DOMAINS_MODE)
