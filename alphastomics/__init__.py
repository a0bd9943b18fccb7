"""AlphaSTomics: one diffusion model over gene expression and cell coordinates of spatial transcriptomics slices."""

__version__ = "0.1.0"

MODES = ("expr_to_pos", "pos_to_expr", "joint")
