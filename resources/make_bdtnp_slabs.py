"""Cut the BDTNP Drosophila virtual embryo (one 3D volume) into slabs along its long (x) axis.

Each slab is saved as its own h5ad with ``obs['slice_id'] = 'slab<i>'`` and the original 3D
coordinates (shared frame), so the bundled 3D dataset has several "serial sections".

    python resources/make_bdtnp_slabs.py ../shared/data/bdtnp_drosophila/bdtnp_drosophila.h5ad resources/bdtnp_drosophila 4
"""

import sys
from pathlib import Path

import anndata as ad
import numpy as np


def main(source: str, out_dir: str, n_slabs: int) -> None:
    adata = ad.read_h5ad(source)
    x = adata.obsm["spatial"][:, 0]
    edges = np.quantile(x, np.linspace(0, 1, n_slabs + 1))
    slab = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_slabs - 1)
    for i in range(n_slabs):
        part = adata[slab == i].copy()
        part.obs["slice_id"] = f"slab{i}"
        part.uns["source"] = {"file": Path(source).name, "slab": i, "axis": "x",
                              "x_range": [float(edges[i]), float(edges[i + 1])]}
        part.write_h5ad(Path(out_dir) / f"bdtnp_slab{i}.h5ad", compression="gzip")
        print(f"slab{i}: {part.n_obs} cells, x in [{edges[i]:.1f}, {edges[i + 1]:.1f}]")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
