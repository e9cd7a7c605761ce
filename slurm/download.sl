#!/bin/bash
# Dataset download (feature_extraction/downloadYt.py) as a job array: task i of N takes URLs i, i+N, ...
#
#   VMR_LIST=lists/SymMV.txt VMR_OUT=data/SymMV sbatch --array=0-7 slurm/download.sl   (from the repo root)
#   python slurm/submit.py --stage download --list lists/SymMV.txt --out data/SymMV --tasks 8
#
# Exported variables (defaults in brackets):
#   VMR_LIST  file with one URL (or bare YouTube id) per line  [lists/SymMV.txt]
#   VMR_OUT   dataset folder shared by all tasks: video/, audio/, archive.txt, status.csv (merged under a lock)  [data/SymMV]
#   VMR_PROXIES  file with one proxy URL per line, passed as --proxies (credentials stay in the file, never on
#             a command line: not in ps, scontrol or the job's environment)  []
#   ARGS      more downloadYt.py flags, e.g. "--cookies cookies.txt --audio"  []
# The same URL twice in the list (also as another URL form of one YouTube id) would be downloaded by two tasks
# into one file at once: submit.py removes duplicates before sharding.
# Many tasks downloading from one address invite bot checks: keep N small or give each node its own proxy.
# The resources below are defaults; options given to sbatch on the command line win.
#SBATCH --job-name=vmr-download
#SBATCH --array=0
#SBATCH --output=slurm/logs/%x-%A_%a.out
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=24:00:00

VMR_LIST=${VMR_LIST:-lists/SymMV.txt} VMR_OUT=${VMR_OUT:-data/SymMV}
source "${VMR_REPO:-.}/slurm/common.sh"
vmr_task_inputs
STATUS_CSV="$VMR_OUT/status.csv"
# shellcheck disable=SC2086  # ARGS is a word list
"$VMR_PYTHON" feature_extraction/downloadYt.py --list "$TASK_INPUTS" --out "$VMR_OUT" \
    ${VMR_PROXIES:+--proxies "$VMR_PROXIES"} ${ARGS:-}
