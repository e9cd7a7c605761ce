#!/bin/bash
# Optical-flow motion segments and ranks (flow/<id>.npy/.json; ranks.csv from the merge step) as a job array.
#
#   VMR_LIST=videos.txt VMR_OUT=features sbatch --array=0-63 slurm/flow.sl     (from the repo root)
#   python slurm/submit.py --stage flow --list videos.txt --out features --tasks 64   (same, plus merge and records)
#
# Exported variables (defaults in brackets):
#   VMR_LIST  file with one video path per line; task i of N takes lines i, i+N, ...  [videos.txt]
#   VMR_OUT   output folder, shared by all tasks (each writes only complete per-video files)  [features]
#   FEATURES  extract.py tokens  [flow]
#   DEVICE    cpu or cuda  [cuda when a GPU is allocated (sbatch --gres=gpu:1), else cpu]
#   ARGS      more extract.py flags, e.g. "--weights random --max_seconds 360"  []
# Threads = --cpus-per-task. The resources below are defaults: options given to sbatch on the
# command line win (e.g. sbatch --time=2:00:00 --cpus-per-task=8 --partition=gpu --gres=gpu:1 ...).
# After the array: python -m feature_extraction.merge $VMR_OUT (submit.py runs it as a dependent job).
#SBATCH --job-name=vmr-flow
#SBATCH --array=0
#SBATCH --output=slurm/logs/%x-%A_%a.out
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=12:00:00

VMR_LIST=${VMR_LIST:-videos.txt} VMR_OUT=${VMR_OUT:-features} FEATURES=${FEATURES:-flow}
source "${VMR_REPO:-.}/slurm/common.sh"
vmr_extract
