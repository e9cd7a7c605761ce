#!/bin/bash
# MGSV-EC conversion (python -m vmr.mgsv --convert_only) as one job: run it once; the training jobs of every seed
# read VMR_OUT/data (train.csv, val.csv, test.csv).
#
#   python -m vmr.mgsv --download_only               (first, on a node with network: compute nodes are often offline)
#   VMR_OUT=mgsv sbatch slurm/mgsv.sl                (from the repo root)
#   python slurm/submit.py --stage mgsv --out mgsv   (does both: fetches and checks here, then submits)
#
# Then train the seeds as job arrays once the conversion is done (--wait returns when it is; a training submission
# reads VMR_OUT/data to size its --mem, so it cannot be queued behind the conversion with --dependency):
#   python slurm/submit.py --stage mgsv --out mgsv --wait && \
#   python slurm/submit.py --stage train_vmnet --data mgsv/data --out mgsv/vmnet --seeds 0 1 2 --val mgsv/data/val.csv && \
#   python slurm/submit.py --stage train_transformer --data mgsv/data --out mgsv/transformer --seeds 0 1 2 \
#       --val mgsv/data/val.csv --args "--segments_from features"
# The runs land in mgsv/vmnet/seed<SEED>/ and mgsv/transformer/seed<SEED>/, each with its metrics.json on the test split.
#
# Exported variables (defaults in brackets):
#   VMR_OUT  output folder: VMR_OUT/data (video/, audio/, train.csv, val.csv, test.csv, moments.csv) and
#            VMR_OUT/LICENSE-DATA.txt  [mgsv]
#   ARGS     more vmr.mgsv flags, e.g. "--dtype float16" or "--source /data/MGSV-EC"  []
# The job reads the download cache ($VMR_CACHE/mgsv, or --cache in ARGS) that the fetch filled: give both the same
# value on a file system the compute node sees. A rerun converts only what is missing.
#SBATCH --job-name=vmr-mgsv
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=4:00:00

VMR_OUT=${VMR_OUT:-mgsv}
source "${VMR_REPO:-.}/slurm/common.sh"
# shellcheck disable=SC2086  # ARGS is a word list
"$VMR_PYTHON" -m vmr.mgsv --out "$VMR_OUT" --convert_only ${ARGS:-}
