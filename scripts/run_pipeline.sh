#!/usr/bin/env bash
# Install what is needed, then run the whole pipeline on the bundled data (extra arguments go
# to snakemake, e.g. `--profile slurm` or `-n`). Prints how long the run took.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
start=$(date +%s)
snakemake "$@"
# the benchmark's targets, met or not, slice by slice (also in every report and in summary.html)
[ -f results/targets.txt ] && cat results/targets.txt
echo "pipeline finished in $(( $(date +%s) - start )) s; reports: $(ls results/*/report.html 2>/dev/null | tr '\n' ' ')"
