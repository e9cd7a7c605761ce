#!/bin/bash
# VM-NET training (vmnet/train.py) as one job; a resubmission resumes from VMR_OUT/last.pt.
#
#   VMR_DATA=data/vmnet VMR_OUT=runs/vmnet sbatch slurm/train_vmnet.sl              (from the repo root)
#   python slurm/submit.py --stage train_vmnet --data data/vmnet --out runs/vmnet [--gpus 1]
#
# Exported variables (defaults in brackets):
#   VMR_DATA  folder written by vmnet/prepare.py: video/, audio/ (or train/, test/ split folders), train.csv, test.csv  [data/vmnet]
#   VMR_OUT   save dir: last.pt, best.pt, train_log.csv/.png, metrics.json  [runs/vmnet]
#   DEVICE    cpu or cuda  [cuda when a GPU is allocated (sbatch --gres=gpu:1), else cpu]
#   ARGS      more vmnet/train.py flags, e.g. "--epochs 200 --preset original"  []
# The resources below are defaults; options given to sbatch on the command line win. submit.py asks for
# --mem from the data the job reads: with split folders (VMR_DATA/train and test, prepare.py --split_format mmap,
# read one item at a time) 4 GB + 1.5 x the test gallery in float32; else 4 GB + 1.5 x the .npy files under VMR_DATA.
#SBATCH --job-name=vmr-train-vmnet
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00

VMR_DATA=${VMR_DATA:-data/vmnet} VMR_OUT=${VMR_OUT:-runs/vmnet}
source "${VMR_REPO:-.}/slurm/common.sh"
# shellcheck disable=SC2086  # ARGS is a word list
"$VMR_PYTHON" vmnet/train.py --train_data_dir "$TRAIN_DIR" --train_csv_path "$VMR_DATA/train.csv" \
    --test_data_dir "$TEST_DIR" --test_csv_path "$VMR_DATA/test.csv" --save_dir "$VMR_OUT" \
    --device "$DEVICE" --threads "$THREADS" --resume ${ARGS:-}
