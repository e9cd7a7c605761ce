#!/bin/bash
# I3D RGB + flow features as a job array (RAFT flow: give it a GPU, or ARGS="--flow_method farneback").
#
#   VMR_LIST=videos.txt VMR_OUT=features sbatch --array=0-63 slurm/i3d.sl     (from the repo root)
#   python slurm/submit.py --stage i3d --list videos.txt --out features --tasks 64   (same, plus merge and records)
#
# Exported variables (defaults in brackets):
#   VMR_LIST  file with one video path per line; task i of N takes lines i, i+N, ...  [videos.txt]
#   VMR_OUT   output folder, shared by all tasks (each writes only complete per-video files)  [features]
#   FEATURES  extract.py tokens  [i3d]
#   DEVICE    cpu or cuda  [cuda when a GPU is allocated (sbatch --gres=gpu:1), else cpu]
#   ARGS      more extract.py flags, e.g. "--weights random --max_seconds 360"  []
# Threads = --cpus-per-task. The resources below are defaults: options given to sbatch on the
# command line win (e.g. sbatch --time=2:00:00 --cpus-per-task=8 --partition=gpu --gres=gpu:1 ...).
# After the array: python -m feature_extraction.merge $VMR_OUT (submit.py runs it as a dependent job).
#SBATCH --job-name=vmr-i3d
#SBATCH --array=0
#SBATCH --output=slurm/logs/%x-%A_%a.out
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=48:00:00

VMR_LIST=${VMR_LIST:-videos.txt} VMR_OUT=${VMR_OUT:-features} FEATURES=${FEATURES:-i3d}
source "${VMR_REPO:-.}/slurm/common.sh"
vmr_extract
