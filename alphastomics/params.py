"""``alphastomics params``: total and active parameters of the Dense, Gated, MoE and Gated+MoE
variants of a config."""

from __future__ import annotations

import argparse
import dataclasses

from alphastomics.config import load_config
from alphastomics.model.network import AlphaSTomicsNet, count_parameters

VARIANTS = {
    "Dense": {"use_gated_attention": False, "use_moe": False},
    "Gated": {"use_gated_attention": True, "use_moe": False},
    "MoE": {"use_gated_attention": False, "use_moe": True},
    "Gated+MoE": {"use_gated_attention": True, "use_moe": True},
}


def parameter_table(config, num_genes: int) -> list[dict]:
    rows = []
    for name, changes in VARIANTS.items():
        model_config = dataclasses.replace(config.model, **changes)
        # every gene zero-inflated (two channels each): the upper bound for a single-cell panel
        channel_genes = list(range(num_genes)) * 2
        total, active = count_parameters(AlphaSTomicsNet(model_config, channel_genes, num_genes, config.diffusion.diffusion_steps))
        rows.append({"variant": name, "total": total, "active_per_cell": active, "active_fraction": active / total})
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (its model: section); defaults otherwise")
    p.add_argument("--num-genes", type=int, default=500, help="gene-list length (default 500)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    m = config.model
    print(f"hidden_dim={m.hidden_dim} layers={m.num_layers} heads={m.num_heads} gate_type={m.gate_type} "
          f"experts={m.num_experts} top_k={m.moe_top_k} genes={args.num_genes}")
    print(f"{'variant':<10} {'total':>12} {'active/cell':>12} {'active %':>9}")
    for row in parameter_table(config, args.num_genes):
        print(f"{row['variant']:<10} {row['total']:>12,} {row['active_per_cell']:>12,} {100 * row['active_fraction']:>8.1f}%")
    return 0
