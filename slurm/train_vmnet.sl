#!/bin/bash
# VM-NET training (vmnet/train.py) as one job, or as a job array over seeds; a resubmission resumes from last.pt.
#
#   VMR_DATA=data/vmnet VMR_OUT=runs/vmnet sbatch slurm/train_vmnet.sl              (from the repo root)
#   python slurm/submit.py --stage train_vmnet --data data/vmnet --out runs/vmnet [--gpus 1]
#
# Many seeds, one array task each (task i: --seed <i-th seed> into VMR_OUT/seed<SEED>/):
#   VMR_SEEDS="0 1 2" sbatch --array=0-2 slurm/train_vmnet.sl
#   python slurm/submit.py --stage train_vmnet --data data/vmnet --out runs/vmnet --seeds 0 1 2
# MGSV-EC (its published validation split selects best.pt): convert once, then train the seeds on it:
#   python slurm/submit.py --stage mgsv --out mgsv --wait
#   python slurm/submit.py --stage train_vmnet --data mgsv/data --out mgsv/vmnet --seeds 0 1 2 --val mgsv/data/val.csv
#
# Exported variables (defaults in brackets):
#   VMR_DATA   folder written by vmnet/prepare.py or vmr.mgsv: video/, audio/ (or train/, test/ split folders), train.csv, test.csv  [data/vmnet]
#   VMR_OUT    save dir: last.pt, best.pt, train_log.csv/.png, metrics.json (in VMR_OUT/seed<SEED>/ with VMR_SEEDS)
#              [runs/vmnet]
#   VMR_SEEDS  space-separated seeds, one per array task (an array of that many tasks)  [none: one run, train.py's seed]
#   VMR_VAL    CSV of validation ids (--val_csv_path, e.g. mgsv/data/val.csv)  [none: train.py's --val_fraction]
#   DEVICE     cpu or cuda  [cuda when a GPU is allocated (sbatch --gres=gpu:1), else cpu]
#   ARGS       more vmnet/train.py flags, e.g. "--epochs 200 --preset original"  []
# The resources below are defaults (per array task); options given to sbatch on the command line win. submit.py asks
# for --mem from the data the job reads: with split folders (VMR_DATA/train and test, prepare.py --split_format mmap,
# read one item at a time) 4 GB + 1.5 x the test gallery in float32; else 4 GB + 1.5 x the .npy files under VMR_DATA.
#SBATCH --job-name=vmr-train-vmnet
#SBATCH --output=slurm/logs/%x-%j.out
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00

VMR_DATA=${VMR_DATA:-data/vmnet} VMR_OUT=${VMR_OUT:-runs/vmnet}
source "${VMR_REPO:-.}/slurm/common.sh"
vmr_training_flags
# shellcheck disable=SC2086  # ARGS is a word list
"$VMR_PYTHON" vmnet/train.py --train_data_dir "$TRAIN_DIR" --train_csv_path "$VMR_DATA/train.csv" \
    --test_data_dir "$TEST_DIR" --test_csv_path "$VMR_DATA/test.csv" --save_dir "$SAVE_DIR" \
    --device "$DEVICE" --threads "$THREADS" --resume "${TRAIN_FLAGS[@]}" ${ARGS:-}
