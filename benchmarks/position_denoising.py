"""Does a trained model denoise coordinates, or does it remember its training slices?

    python benchmarks/position_denoising.py          # after the pipeline: results/starmap_mpfc, results/bdtnp_drosophila
    python benchmarks/position_denoising.py --results results --datasets starmap_mpfc --steps 2 5 10 15 30 60

For each dataset with a model under ``--results``, every slice (training and held-out) is given to
the network as ``expr_to_pos`` sees it (expression clean) with its true coordinates noised to
diffusion step t, and the network's estimate of the clean coordinates is compared with them:

    ratio(t) = mean squared error of the estimate / mean squared error of c_skip(t) x_t

c_skip(t) x_t, the noisy input shrunk as the network's own preconditioning does, is what a network
that moves no cell returns, so a ratio below 1 means the model denoises and above 1 that it moves
cells away from where they are. At the lowest noise levels (noise about the cell spacing) a model
that has learnt how cells space themselves goes below 1 on held-out slices too; one that has only
learnt where its training slices' cells were goes below 1 on those and above 1 on the held-out
ones. Mean over ``--repeats`` noise draws per step, generated axes only.

The last line is one JSON object: per dataset, the held-out and the training slices' mean ratio
at each step.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from alphastomics.checkpoint import load_model
from alphastomics.diffusion.schedule import position_noise
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import load_slice
from alphastomics.model.network import masked_centre, precondition
from alphastomics.draws import known_batch
from common import add_model_arguments, trained_models


@torch.no_grad()
def denoising_ratios(model, batch, steps: list[int], repeats: int, seed: int) -> dict[int, float]:
    """ratio(t) of the network's coordinate estimate on one slice (see the module docstring)."""
    centred = model.frame.kind == "per_slice"
    x0 = masked_centre(batch.positions, batch.node_mask) if centred else batch.positions
    axes = batch.dim_mask[:, None, :].bool() & batch.node_mask[..., None].bool()
    alpha_bar = model.schedule.alpha_bar("position")
    generator = torch.Generator().manual_seed(seed)
    ones = torch.ones(1)
    out = {}
    for t in steps:
        model_error, input_error = 0.0, 0.0
        for _ in range(repeats):
            eps = position_noise(x0.shape, batch.node_mask, batch.dim_mask, centred, generator)
            x_t = torch.where(batch.dim_mask[:, None, :].bool(), alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * eps, x0)
            estimate = model.network(batch.expression, x_t, torch.zeros(1, dtype=torch.long), torch.full((1,), t), ones,
                                     alpha_bar[t] * ones, batch.node_mask, batch.gene_mask, batch.dim_mask).positions
            c_skip, _ = precondition(alpha_bar[t] * ones)
            model_error += float(((estimate - x0) ** 2)[axes].mean())
            input_error += float(((c_skip * x_t - x0) ** 2)[axes].mean())
        out[t] = model_error / input_error
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--steps", nargs="+", type=int, default=[2, 5, 10, 15, 30, 60, 120])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    summary: dict = {}
    for dataset, data_dir, checkpoint in trained_models(args):
        model = load_model(checkpoint)
        manifest = load_manifest(data_dir)
        steps = [t for t in args.steps if 0 < t <= model.schedule.steps]
        groups: dict[str, list[dict[int, float]]] = {"held_out": [], "training": []}
        print(f"\n{dataset}: MSE of the coordinate estimate / MSE of the noisy input, at diffusion step "
              f"({model.schedule.steps} in all): {' '.join(f't={t:<5d}' for t in steps)}")
        for slice_id in manifest["slices"]:
            ratios = denoising_ratios(model, known_batch(model, load_slice(data_dir, slice_id, manifest), "expr_to_pos"),
                                      steps, args.repeats, args.seed)
            group = "training" if slice_id in model.train_slices else "held_out"
            groups[group].append(ratios)
            print(f"  {slice_id} ({group.replace('_', '-')}): {' '.join(f'{ratios[t]:<7.3f}' for t in steps)}", flush=True)
        summary[dataset] = {group: {str(t): round(float(np.mean([r[t] for r in rows])), 4) for t in steps}
                            for group, rows in groups.items() if rows}
    print(json.dumps({"position_denoising_ratio": summary}))


if __name__ == "__main__":
    main()
