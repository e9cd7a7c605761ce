# Sourced by every slurm/*.sl: repo root, Python, threads, this task's lines, and the task record.
#
# Array task i (i = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) of N (SLURM_ARRAY_TASK_COUNT) takes
# lines i, i+N, i+2N, ... of $VMR_LIST (blank lines and # comments skipped): no shard files.
# submit.py --resubmit_failed reruns some task ids of an N-task array; it exports VMR_TASKS=N and
# VMR_TASK_MIN so that each rerun task takes the same lines as before.
#
# On exit (normal, error or SIGTERM from scancel / the time limit) a trap writes
# $VMR_OUT/.slurm/<jobid>/<task>.json {exit, failed inputs with reasons, log path, seconds since the start}.
#
# Variables read here (all optional):
#   VMR_PYTHON   interpreter (default: .venv/bin/python in the repo when present, else python3)
#   VMR_REPO     repository root (default: the directory sbatch was run from)

cd "${VMR_REPO:-${SLURM_SUBMIT_DIR:-.}}" || exit 1
if [ -z "${VMR_PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then VMR_PYTHON=.venv/bin/python; else VMR_PYTHON=python3; fi
fi

# One thread per allocated CPU (1 when sbatch was given no --cpus-per-task).
THREADS=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1

# A GPU allocated by --gres=gpu:N or --gpus=N (and no DEVICE given) means CUDA.
if [ -z "${DEVICE:-}" ]; then
    if [ -n "${SLURM_JOB_GPUS:-}${SLURM_STEP_GPUS:-}" ] || [ "${SLURM_GPUS_ON_NODE:-0}" != 0 ]; then DEVICE=cuda; else DEVICE=cpu; fi
fi

# Training jobs (VMR_DATA set): vmnet/prepare.py's split folders (--split_format mmap) when present, read one
# item at a time so memory does not grow with the data; else the folder-of-npy layout of VMR_DATA itself.
TRAIN_DIR=${VMR_DATA:-} TEST_DIR=${VMR_DATA:-}
if [ -n "${VMR_DATA:-}" ] && [ -f "$VMR_DATA/train/offsets.npy" ]; then TRAIN_DIR=$VMR_DATA/train; fi
if [ -n "${VMR_DATA:-}" ] && [ -f "$VMR_DATA/test/offsets.npy" ]; then TEST_DIR=$VMR_DATA/test; fi

VMR_STARTED=$(date +%s.%N)
JOB=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}
TASK=${SLURM_ARRAY_TASK_ID:-0}
NTASKS=${VMR_TASKS:-${SLURM_ARRAY_TASK_COUNT:-1}}
TASK_INDEX=$(( TASK - ${VMR_TASK_MIN:-${SLURM_ARRAY_TASK_MIN:-0}} ))
RECORDS="$VMR_OUT/.slurm/$JOB"
mkdir -p "$RECORDS"
TASK_INPUTS=""
STATUS_CSV=""  # download.sl: take failed inputs from the downloader's status.csv

# Write this task's share of $VMR_LIST to $RECORDS/$TASK.list and set TASK_INPUTS to its path.
vmr_task_inputs() {
    if [ ! -f "$VMR_LIST" ]; then
        echo "$VMR_LIST: no such list file (set VMR_LIST to a file with one input per line)" >&2
        exit 2
    fi
    TASK_INPUTS="$RECORDS/$TASK.list"
    awk -v i="$TASK_INDEX" -v n="$NTASKS" '
        { sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") }
        $0 == "" || /^#/ { next }
        (k++ % n) == i' "$VMR_LIST" > "$TASK_INPUTS"
    echo "task $TASK (index $TASK_INDEX of $NTASKS): $(wc -l < "$TASK_INPUTS") inputs from $VMR_LIST, $THREADS threads, device $DEVICE"
}

# The Slurm log files of this task, as the controller expanded them (%A, %a, %j ...).
vmr_logs() {
    scontrol show job -o "${SLURM_JOB_ID:-none}" 2>/dev/null | tr ' ' '\n' | sed -n 's/^Std\(Out\|Err\)=//p'
}

vmr_record() {
    local code=$1 logs=()
    trap - EXIT TERM INT
    while IFS= read -r log; do logs+=(--log "$log"); done < <(vmr_logs)
    "$VMR_PYTHON" slurm/records.py task --record "$RECORDS/$TASK.json" --exit "$code" --started "$VMR_STARTED" \
        ${TASK_INPUTS:+--inputs "$TASK_INPUTS"} ${STATUS_CSV:+--status_csv "$STATUS_CSV"} "${logs[@]}"
    exit "$code"
}
trap 'vmr_record $?' EXIT
trap 'vmr_record 143' TERM
trap 'vmr_record 130' INT

# The training stages: SAVE_DIR and TRAIN_FLAGS, the seed and validation flags of this task's train.py run.
# With VMR_SEEDS="0 1 2" (submit.py --seeds; sbatch --array=0-2) array task i trains with --seed <i-th seed> into
# $VMR_OUT/seed<SEED>/, so every seed resumes its own run; without it the job trains once into $VMR_OUT.
# VMR_VAL is a CSV of validation ids (--val_csv_path, e.g. MGSV-EC's val.csv) instead of train.py's --val_fraction.
vmr_training_flags() {
    SAVE_DIR=$VMR_OUT TRAIN_FLAGS=()
    if [ -n "${VMR_SEEDS:-}" ]; then
        local seeds
        read -ra seeds <<< "$VMR_SEEDS"
        if [ -z "${SLURM_ARRAY_TASK_ID:-}" ] && [ "${#seeds[@]}" -gt 1 ]; then
            echo "VMR_SEEDS has ${#seeds[@]} seeds ($VMR_SEEDS) but this is not an array task: submit it with" \
                "sbatch --array=0-$(( ${#seeds[@]} - 1 )) (or python slurm/submit.py --seeds ...)" >&2
            exit 2
        fi
        if [ "$TASK_INDEX" -lt 0 ] || [ "$TASK_INDEX" -ge "${#seeds[@]}" ]; then
            echo "task $TASK (index $TASK_INDEX): VMR_SEEDS has ${#seeds[@]} seed(s) ($VMR_SEEDS): submit an array" \
                "of that size (sbatch --array=0-$(( ${#seeds[@]} - 1 )))" >&2
            exit 2
        fi
        SAVE_DIR=$VMR_OUT/seed${seeds[$TASK_INDEX]}
        TRAIN_FLAGS+=(--seed "${seeds[$TASK_INDEX]}")
        echo "task $TASK (index $TASK_INDEX of ${#seeds[@]} seeds): seed ${seeds[$TASK_INDEX]} into $SAVE_DIR"
    fi
    if [ -n "${VMR_VAL:-}" ]; then TRAIN_FLAGS+=(--val_csv_path "$VMR_VAL"); fi
}

# The extraction stages: this task's videos through extract.py, one decode pass for all FEATURES.
vmr_extract() {
    vmr_task_inputs
    if [ ! -s "$TASK_INPUTS" ]; then echo "task $TASK: no inputs (more tasks than lines)"; exit 0; fi
    # shellcheck disable=SC2086  # FEATURES and ARGS are word lists
    "$VMR_PYTHON" feature_extraction/extract.py --videos "$TASK_INPUTS" --out "$VMR_OUT" --features $FEATURES \
        --device "$DEVICE" --threads "$THREADS" ${ARGS:-}
}
