#!/bin/bash
# Merge step after an extraction array: rebuilds VMR_OUT/manifest.json and VMR_OUT/flow/ranks.csv
# from the per-video files (submit.py submits it with --dependency=afterany:<array job>).
#
#   VMR_OUT=features sbatch --dependency=afterany:1234 slurm/merge.sl
#
# Exported variables: VMR_OUT  the extraction's output folder  [features]
#SBATCH --job-name=vmr-merge
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=1:00:00

VMR_OUT=${VMR_OUT:-features}
source "${VMR_REPO:-.}/slurm/common.sh"
"$VMR_PYTHON" -m feature_extraction.merge "$VMR_OUT"
