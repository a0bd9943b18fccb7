"""MIMYR (Krieger, Deshpande, Bei & Ma, bioRxiv 2025.11.24.690239; PyPI ``mimyr``) as a ``joint``
peer: it generates the cells of an unseen section of a registered atlas (locations, cell types,
expression) from its neighbouring sections.

Its public API (``mimyr.Mimyr.train`` / ``generate``) accepts sections of the Allen mouse brain
only: Allen CCF coordinates in millimetres (``obs['x_ccf', 'y_ccf', 'z_ccf']``, with normalisation
and bin edges fixed to the mouse brain), an Allen Brain Cell Atlas cluster for every cell (a fixed
vocabulary of 5,274 clusters), and expression over its fixed 2,000-gene mouse panel (other genes
are ignored). The pretrained models come from the Hugging Face Hub. What was tried, and what came
out when the bundled data were forced into that form: docs/peers.md.

This module checks those requirements on the run's own data and says which fail, so the report
states why MIMYR is not ranked; a dataset that meets them is run through the package's API.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from alphastomics.peers.common import NotApplicable, PeerInputs

# The Allen CCF v3 volume in millimetres (anterior-posterior, dorsal-ventral, left-right), as MIMYR
# normalises its coordinates; a section whose coordinates fall outside it is not in that frame.
CCF_EXTENT_MM = (13.2, 8.0, 11.4)
# installing mimyr 0.1.0 beside this project's environment (pip's resolver, 2026-12-07)
INSTALL_NOTE = ("not installed beside this project: mimyr 0.1.0's dependency slafdb pins scipy < 1.17 (this project "
                "has 1.17.1) and pip picks transformers 5, with which its tokenizer fails (KeyError in "
                "hf_tokenizer._convert_token_to_id); it needs an environment of its own")


def requirement_failures(inputs: PeerInputs) -> list[str]:
    """What of MIMYR's documented input the run's sections lack (empty: it applies)."""
    failures = []
    if inputs.frame != "shared" or inputs.n_dims != 3:
        failures.append("it generates a section of a registered 3D atlas; these sections are "
                        f"{inputs.n_dims}D in a {inputs.frame} frame")
    sections = [inputs.test, *inputs.train]
    coords = np.concatenate([s.coords[:, :3] for s in sections])
    if np.nanmin(coords) < 0 or np.any(np.nanmax(coords, axis=0) > np.array(CCF_EXTENT_MM)):
        failures.append("its coordinates are Allen CCF in millimetres; these lie outside the CCF volume "
                        f"({', '.join(f'{lo:.4g} to {hi:.4g}' for lo, hi in zip(coords.min(0), coords.max(0)))})")
    if any(s.cell_types is None for s in inputs.train):
        failures.append("it needs an Allen Brain Cell Atlas cluster for every training cell; these sections have no cell types")
    return failures


def mimyr_section(inputs: PeerInputs, seed: int = 0):
    failures = requirement_failures(inputs)
    if importlib.util.find_spec("mimyr") is None:
        failures.append(INSTALL_NOTE)
    if failures:
        raise NotApplicable("MIMYR does not apply: " + "; ".join(failures))
    # A registered mouse-brain atlas with the package installed: its API call is added with the first
    # dataset that meets the requirements (none of ../shared/data does).
    raise NotApplicable("MIMYR: this dataset meets its documented input, but the run through its API is not wired "
                        "in yet (no dataset of this project is an Allen-CCF mouse brain)")
