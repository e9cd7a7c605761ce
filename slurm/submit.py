"""Submit a VMR stage to Slurm as a job array, with the merge step as a dependent job.

    python slurm/submit.py --stage features --list videos.txt --out features --tasks 64 [--gpus 1] [--wait]
    python slurm/submit.py --out features --resubmit_failed 1234 [--wait]
    python slurm/submit.py --stage train_vmnet --data data/vmnet --out runs/vmnet --seeds 0 1 2 [--val DATA/val.csv]

Task i of N takes lines i, i+N, ... of the list (see slurm/common.sh). Training with --seeds is one array too:
task i trains with --seed SEEDS[i] into OUT/seed<SEED>/ and resumes its own run when resubmitted. MGSV-EC:
--stage mgsv --out mgsv --wait converts the release into mgsv/data (train.csv, val.csv, test.csv), then e.g.
--stage train_transformer --data mgsv/data --out mgsv/transformer --seeds 0 1 2 --val mgsv/data/val.csv
--args "--segments_from features" (MGSV-EC has no flow ranks.csv: segments are cut where the features change).

Weights are checked (and official ones downloaded) here, before submitting, because compute nodes are often
offline. The job record OUT/.slurm/<jobid>.json {stage, list, N, tasks, env, ...} and the task records
OUT/.slurm/<jobid>/<task>.json (slurm/records.py) outlive squeue: --wait and --resubmit_failed read them.

--wait reports what a user would otherwise find out days later: the pending reason of a job that waits
longer than --pending_after, a one-line error naming the sbatch option to change when Slurm says the job can
never start, and at the end the videos per hour per task with an estimate for the whole list.
Credentials never reach a command line, the job's environment or the records: proxies come from a file
(--proxies FILE, passed on as its path), and a URL with user:password in --args or --sbatch is refused.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import records
from feature_extraction.atomic import write_text
from feature_extraction.downloadYt import read_list, redact
from vmr.splits import Split, is_split

REPO = Path(__file__).resolve().parents[1]

EXTRACTION = {"features": "resnet clip vggish", "resnet": "resnet", "clip": "clip", "vggish": "vggish",
              "i3d": "i3d", "flow": "flow"}  # stage -> default FEATURES
STAGES = [*EXTRACTION, "download", "train_vmnet", "train_transformer", "mgsv"]
TRAINING = {"train_vmnet", "train_transformer"}
ONE_JOB = TRAINING | {"mgsv"}  # one job, no list
DEFAULT_OUT = {"download": "data/SymMV", "train_vmnet": "runs/vmnet", "train_transformer": "runs/transformer",
               "mgsv": "mgsv"}
DEFAULT_DATA = "data/vmnet"  # VMR_DATA of the training .sl files, relative to the repo root
TRAIN_MEMORY_BASE_GB, TRAIN_MEMORY_PER_DATA_BYTE = 4, 1.5  # --mem of a training job: 4 GB + 1.5 x its data
# Pending reasons that are Slurm's own verdict that the partition refuses the request as it stands.
NEVER_REASONS = {
    "PartitionConfig": "the request (--cpus-per-task, --mem, --nodes, --ntasks) or --partition",
    "PartitionNodeLimit": "--nodes (or --partition)",
    "PartitionTimeLimit": "--time (or --partition)",
}
# sbatch's refusal (lower-case fragment) -> the option to change.
SBATCH_HINTS = [
    ("memory specification can not be satisfied", "--mem"),
    ("requested node configuration is not available", "--cpus-per-task, --mem or --gres"),
    ("invalid partition", "--partition"),
    ("invalid generic resource", "--gres (or --gpus)"),
    ("time limit", "--time"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=STAGES, help="which slurm/<stage>.sl to submit")
    p.add_argument("--list", type=Path, help="file with one input per line (videos; URLs for download); "
                   "not used by the training stages and mgsv")
    p.add_argument("--out", type=Path, help="VMR_OUT: output folder (training: the save dir); records go to "
                   "OUT/.slurm/ (default: features; data/SymMV for download; runs/vmnet, runs/transformer for training; "
                   "mgsv for mgsv, which fetches MGSV-EC on this node before submitting)")
    p.add_argument("--tasks", type=int, default=1, help="array size N, capped at the number of list lines (default: 1)")
    p.add_argument("--features", help="FEATURES for the extraction stages (default: the stage's own, e.g. 'resnet' "
                   "for --stage resnet, 'resnet clip vggish' for --stage features)")
    p.add_argument("--args", default="", help="ARGS: extra flags for the stage's script, e.g. '--weights random' "
                   "(write --args=--pca when it is a single flag); a URL with credentials is refused (use --proxies)")
    p.add_argument("--proxies", type=Path, help="--stage download: file with one proxy URL per line "
                   "(scheme://[user:pass@]host:port); the tasks get its path, so credentials stay in the file (default: none)")
    p.add_argument("--data", type=Path, help="VMR_DATA for the training stages; the job's --mem is computed from the "
                   f"size of its .npy files (default: {DEFAULT_DATA}, the .sl file's)")
    p.add_argument("--ranks", type=Path, help="VMR_RANKS (ranks.csv) for --stage train_transformer (default: the .sl "
                   "file's features/flow/ranks.csv; none when --args has --segments_from features)")
    p.add_argument("--seeds", type=int, nargs="+", help="training stages: one array task per seed (VMR_SEEDS), task i "
                   "runs train.py --seed SEEDS[i] into OUT/seed<SEED>/ (default: one job into OUT, train.py's seed)")
    p.add_argument("--val", type=Path, help="training stages: VMR_VAL, a CSV of validation ids passed as --val_csv_path "
                   "(e.g. mgsv/data/val.csv, MGSV-EC's published split) instead of train.py's --val_fraction")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per task: adds --gres=gpu:N and sets DEVICE=cuda (default: 0)")
    p.add_argument("--sbatch", default="", help="more sbatch options, e.g. '--partition=gpu --time=2:00:00 "
                   "--cpus-per-task=8'; they override the #SBATCH lines")
    p.add_argument("--dry_run", action="store_true", help="print the sbatch commands instead of running them")
    p.add_argument("--wait", action="store_true", help="poll until the jobs leave the queue (stop at once, naming "
                   "the sbatch option to change, when one can never start), then print which tasks failed and why "
                   "and the videos per hour per task; exit status 1 when any failed")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between squeue polls with --wait (default: 10)")
    p.add_argument("--pending_after", type=float, default=60.0, help="with --wait, print the reason of a job pending "
                   "longer than this many seconds, and again when it changes (default: 60)")
    p.add_argument("--resubmit_failed", metavar="JOBID", help="rerun only the failed (or record-less) tasks of "
                   "this job of OUT, with its recorded settings (--sbatch options given now are added)")
    args = p.parse_args(argv)
    if args.resubmit_failed is None:
        if args.stage is None:
            p.error("--stage is required (or --resubmit_failed JOBID)")
        if args.stage not in ONE_JOB and args.list is None:
            p.error(f"--stage {args.stage} needs --list")
    if args.tasks < 1:
        p.error("--tasks must be >= 1")
    if args.proxies is not None and args.stage != "download":
        p.error("--proxies is for --stage download")
    for flag in ("seeds", "val"):
        if getattr(args, flag) is not None and args.stage not in TRAINING:
            p.error(f"--{flag} is for --stage {' or '.join(sorted(TRAINING))}")
    if args.seeds is not None:
        repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
        if repeated:
            p.error(f"--seeds: {' '.join(map(str, repeated))} given twice (two tasks would train into one folder)")
        if any(w == "--seed" or w.startswith("--seed=") for w in shlex.split(args.args)):
            p.error("--seeds and --seed in --args: every task would train with the one --seed")
    return args


def required_checkpoints(features, extract_args):
    """(checkpoint names, 'official' or 'random') that extract.py would load for FEATURES and its flags
    (weights.TOKEN_CHECKPOINTS), read without importing torch and every model module."""
    from feature_extraction.extract import TOKENS
    from feature_extraction.weights import checkpoint_flags, required_checkpoints

    flags = checkpoint_flags(extract_args)
    tokens = list(TOKENS) if "all" in features else features
    unknown = [t for t in tokens if t not in TOKENS]
    if unknown:
        raise SystemExit(f"unknown FEATURES token(s) {' '.join(unknown)}; known: {' '.join(TOKENS)} all")
    return required_checkpoints(tokens, flags), flags.weights


def check_weights(features, extract_args):
    """Fail before submitting when a checkpoint is missing (official ones are downloaded here)."""
    from feature_extraction import weights

    names, kind = required_checkpoints(features, extract_args)
    problems = []
    for name in names:
        try:
            weights.checkpoint_path(name, kind)
        except weights.WeightsError as e:
            problems.append(str(e))
    return names, problems


def check_unique_ids(list_path):
    """Two inputs with the same stem in different tasks would silently share one output file."""
    from feature_extraction import pipeline

    dups = pipeline.duplicate_stems(pipeline.list_videos([str(list_path)]))
    if dups:
        raise SystemExit(f"{list_path}: inputs with the same id (file stem) would overwrite each other's features:\n"
                         + "\n".join(f"  {stem}: {', '.join(map(str, ps))}" for stem, ps in dups.items()))


def check_no_credentials(what, text):
    """Refuse user:password in a URL: it would be visible in ps and scontrol, and stored in the job record."""
    if redact(text) != text:
        raise SystemExit(f"{what}: {redact(text)}: credentials in a URL would be visible on command lines (ps, "
                         "scontrol) and stored in OUT/.slurm; put proxies in a file and pass --proxies FILE")


def unique_download_list(list_path, out, dry_run):
    """The list's unique URLs (duplicates include other URL forms of one YouTube id), written to
    OUT/.slurm/urls-<hash>.txt: two tasks given the same video would download it into one file at once."""
    urls, problems = read_list(list_path)
    for number, kind, text in problems:
        if kind in ("duplicate", "malformed"):
            print(f"{list_path}:{number}: {kind}, skipped: {redact(text)}", file=sys.stderr)
    text = "".join(f"{url}\n" for url in urls)
    path = records.records_dir(out) / f"urls-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt"
    if urls and not dry_run:
        write_text(path, text)
    return path, len(urls)


def features_segments(extra_args):
    """True when the flags end with --segments_from features (the last one wins, as in argparse)."""
    words = shlex.split(extra_args)
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--segments_from"]
    values += [w.split("=", 1)[1] for w in words if w.startswith("--segments_from=")]
    return bool(values) and values[-1] == "features"


def training_memory(data):
    """sbatch --mem for a training job from the data it holds in memory, times 1.5, plus 4 GB for Python, torch
    and the model: (bytes held, option, what they are).

    With split folders (DATA/train, vmnet/prepare.py --split_format mmap) training reads one item at a time and
    its memory does not grow with the data (make bench: bench_scale); only the test gallery evaluated at the
    end is held, as float32. Else every .npy under DATA (links followed) is held."""
    if is_split(data / "train"):
        test = Split(data / "test") if is_split(data / "test") else None
        size = 0 if test is None else sum(int(test.offsets[-1]) * dim * 4 for dim in test.dims)
        what = "of test gallery (float32; the split folders are read one item at a time)"
    else:
        files = {p.resolve() for p in data.rglob("*.npy")}
        size = sum(p.stat().st_size for p in files if p.is_file())
        what = "of features"
    gb = math.ceil(TRAIN_MEMORY_BASE_GB + TRAIN_MEMORY_PER_DATA_BYTE * size / 2**30)
    return size, f"--mem={gb}G", what


def sbatch_argv(script, array, options, dependency=None):
    argv = ["sbatch", "--parsable", *options]
    if array is not None:
        argv.append(f"--array={array}")
    if dependency:
        argv.append(f"--dependency=afterany:{dependency}")
    return argv + [f"slurm/{script}"]


def show(env_vars, argv):
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env_vars.items()]
    return f"cd {shlex.quote(str(REPO))} && " + " ".join(assigns + [shlex.join(argv)])


def run_sbatch(env_vars, argv):
    """Submit from the repo root (the .sl files and their log paths are relative to it); returns the job id."""
    result = subprocess.run(argv, cwd=REPO, env={**os.environ, **env_vars}, capture_output=True, text=True)
    if result.returncode != 0:
        error = " ".join((result.stderr.strip() or result.stdout.strip()).split())
        hints = [option for fragment, option in SBATCH_HINTS if fragment in error.lower()]
        hint = f"; change {hints[0]} (submit.py --sbatch '...')" if hints else ""
        raise SystemExit(redact(f"sbatch failed: {error}{hint}\n  {show(env_vars, argv)}"))
    return result.stdout.strip().split(";")[0]


def array_spec(tasks):
    """'0-3' for consecutive ids, else '0,5,7'."""
    if tasks == list(range(tasks[0], tasks[-1] + 1)):
        return f"{tasks[0]}-{tasks[-1]}" if len(tasks) > 1 else str(tasks[0])
    return ",".join(map(str, tasks))


def submit(stage, env_vars, tasks, options, out, dry_run, resubmit_of=None, list_path=None, inputs=None):
    """Submit the array (and the merge job for extraction stages); write the job record."""
    array = None if stage in ONE_JOB and "VMR_SEEDS" not in env_vars else array_spec(tasks)
    argv = sbatch_argv(f"{stage}.sl", array, options)
    merge_vars = {"VMR_OUT": env_vars["VMR_OUT"]}
    if dry_run:
        print(show(env_vars, argv))
        if stage in EXTRACTION:
            print(show(merge_vars, sbatch_argv("merge.sl", None, [], dependency="<array job id>")))
        return None
    job = run_sbatch(env_vars, argv)
    merge = run_sbatch(merge_vars, sbatch_argv("merge.sl", None, [], dependency=job)) if stage in EXTRACTION else None
    record = {"job": job, "stage": stage, "script": f"slurm/{stage}.sl", "list": list_path, "inputs": inputs,
              "N": int(env_vars.get("VMR_TASKS", 1)), "tasks": tasks, "env": env_vars, "sbatch": argv,
              "options": options, "merge_job": merge, "resubmit_of": resubmit_of,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    records.write_json(records.job_record_path(out, job), record)
    print(job)
    print(f"submitted {stage}: job {job}, {len(tasks)} task(s)" + (f", merge job {merge}" if merge else "")
          + f"; records in {records.records_dir(out)}", file=sys.stderr)
    return job


def scontrol_show(*what):
    """[{key: value}] from `scontrol show WHAT -o`, one dict per line ([] when Slurm does not answer)."""
    result = subprocess.run(["scontrol", "show", *what, "-o"], capture_output=True, text=True)
    if result.returncode != 0:
        return []
    rows = []
    for line in result.stdout.splitlines():
        parts = re.split(r"(?:^|\s+)([A-Za-z][\w:/.]*)=", line.strip())
        rows.append(dict(zip(parts[1::2], (v.strip() for v in parts[2::2]))))
    return rows


def megabytes(text):
    """Slurm's memory sizes ('4096', '3000M', '4G') in MB; None for UNLIMITED and the like."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text or "")
    if not match:
        return None
    return float(match.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]


def never_starts(job, reason):
    """Why pending `job` can never start (one line naming the sbatch option to change), or None.

    Compares what the job asks of one node (CPUs, memory) with the largest node of its partitions and its
    time limit with theirs (whatever the reason, ReqNodeNotAvail included), then trusts Slurm's own verdict
    for the reasons in NEVER_REASONS. Nodes that are down or drained are not a reason: an administrator
    brings them back, so the job just waits.
    """
    request = next((j for j in scontrol_show("job", job) if j.get("JobState") == "PENDING"), None)
    if request is None:
        return None
    partitions = request.get("Partition", "").split(",")
    limits = [p for p in scontrol_show("partition") if p.get("PartitionName") in partitions]
    nodes = scontrol_show("node")
    sizes = []  # (CPUs, MB) one job can get on each node of its partitions, within the partition's limits
    for part in limits:
        max_cpus = int(part["MaxCPUsPerNode"]) if part.get("MaxCPUsPerNode", "").isdigit() else math.inf
        max_mem = megabytes(part.get("MaxMemPerNode")) or math.inf
        sizes += [(min(int(n.get("CPUEfctv") or n.get("CPUTot") or 0), max_cpus),
                   min(megabytes(n.get("RealMemory")) or 0, max_mem))
                  for n in nodes if part["PartitionName"] in n.get("Partitions", "").split(",")]
    cpus = int(request.get("MinCPUsNode", 1))
    per_cpu = "MinMemoryCPU" in request
    mem = megabytes(request.get("MinMemoryCPU") or request.get("MinMemoryNode")) or 0
    mem_node = mem * cpus if per_cpu else mem
    where = f"partition {','.join(partitions)}"
    prefix = f"job {job} can never start ({reason})"
    if sizes and not any(c >= cpus and m >= mem_node for c, m in sizes):
        most_cpus, most_mem = max(c for c, _ in sizes), max(m for _, m in sizes)
        if cpus > most_cpus:
            return (f"{prefix}: it asks for {cpus} CPUs on one node and no node of {where} has more than "
                    f"{most_cpus}: lower --cpus-per-task (e.g. --sbatch '--cpus-per-task={most_cpus}')")
        option = "--mem-per-cpu" if per_cpu else "--mem"
        fit = f"{int(most_mem // cpus)}M" if per_cpu else f"{int(most_mem)}M"
        if mem_node > most_mem:
            return (f"{prefix}: it asks for {mem_node:.0f} MB of memory on one node and no node of {where} has "
                    f"more than {most_mem:.0f} MB: lower {option} (e.g. --sbatch '{option}={fit}')")
        return (f"{prefix}: no node of {where} has both {cpus} CPUs and {mem_node:.0f} MB: lower --cpus-per-task "
                f"or {option}")
    max_time = max((seconds(p.get("MaxTime", "")) or math.inf for p in limits), default=math.inf)
    if (seconds(request.get("TimeLimit", "")) or math.inf) > max_time:
        allowed = max(p["MaxTime"] for p in limits if seconds(p.get("MaxTime", "")) == max_time)
        return (f"{prefix}: it asks for a time limit of {request.get('TimeLimit')} and {where} allows at most "
                f"{allowed}: lower --time (e.g. --sbatch '--time={allowed}')")
    if reason in NEVER_REASONS:
        limit = limits[0] if len(limits) == 1 else {}
        shape = (f" ({limit.get('TotalNodes', '?')} node(s), MaxTime {limit.get('MaxTime', '?')})" if limit else "")
        return f"{prefix}: {where}{shape} refuses the request as it stands: change {NEVER_REASONS[reason]}"
    return None


def seconds(time_limit):
    """squeue's time limit ('1-00:00:00', '2:00:00', '30:00') in seconds; None for UNLIMITED."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", time_limit)
    if not match:
        return None
    days, hours, minutes, secs = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def queue(jobs):
    """squeue lines (id, array job id, state, reason, time limit) of these jobs; [] once they left the queue.

    A pending array shows as one line (12_[3-63]). Any failure other than "Invalid job id" (the jobs
    are gone) is taken for a busy controller for up to 5 minutes: asked again, rather than live tasks
    reported as failed."""
    for attempt in range(30):
        result = subprocess.run(["squeue", "-h", "-o", "%i|%F|%T|%r|%l", "-j", ",".join(jobs)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            return [line.split("|", 4) for line in result.stdout.splitlines() if line.strip()]
        error = " ".join(result.stderr.split())
        if "invalid job id" in error.lower():
            return []
        print(f"squeue failed, asking again in 10 s: {error}", file=sys.stderr)
        time.sleep(10)
    raise SystemExit(f"squeue failed 30 times in a row ({error}); the jobs may still run: squeue -j {','.join(jobs)}")


def in_queue(jobs):
    return bool(queue(jobs))


def wait_for(jobs, poll, pending_after):
    """Poll until the jobs left the queue; print long pending reasons; stop when a job can never start.

    Returns the array's time limit in seconds (None when unknown)."""
    pending_since, printed, checked, time_limit = {}, {}, {}, None
    while lines := queue(jobs):
        now = time.monotonic()
        for job_id, base, state, reason, limit in lines:
            if base == jobs[0]:
                time_limit = seconds(limit) or time_limit
            if state != "PENDING":
                continue
            if reason != "None" and checked.get(base) != reason:  # None: the scheduler has not looked at it yet
                checked[base] = reason
                why = never_starts(base, reason)
                if why:
                    raise SystemExit(f"{why}; remove it from the queue with: scancel {' '.join(jobs)}")
            waited = now - pending_since.setdefault(base, now)
            if waited >= pending_after and printed.get(base) != reason:
                printed[base] = reason
                print(f"job {job_id}: pending for {waited:.0f} s: {reason}", file=sys.stderr)
        time.sleep(poll)
    return time_limit


def wait_and_report(out, job, poll, pending_after):
    """Wait until the job (and its merge job) left the queue; print failures and throughput; return the exit status."""
    job_record = json.loads(records.job_record_path(out, job).read_text())
    jobs = [job] + ([job_record["merge_job"]] if job_record.get("merge_job") else [])
    time_limit = wait_for(jobs, poll, pending_after)
    _, tasks = records.job_summary(out, job)
    failed = records.failed_tasks(tasks)
    print(f"job {job} ({job_record['stage']}): {len(tasks) - len(failed)} of {len(tasks)} task(s) ok")
    for task in failed:
        print("\n".join(records.describe(task, tasks[task])))
    status = 1 if failed else 0
    if job_record.get("merge_job"):
        merge_job = job_record["merge_job"]
        path = records.task_record_path(out, merge_job, 0)
        rec = json.loads(path.read_text()) if path.exists() else None
        if rec is None or rec["exit"] != 0:
            print("\n".join(records.describe(f"merge job {merge_job}", rec)).replace("task merge job", "merge job"))
            status = 1
        else:
            print(f"merge job {merge_job}: ok")
    if failed:
        print(f"{len(failed)} failed; rerun them with: python slurm/submit.py --out {out} --resubmit_failed {job}")
    for line in records.throughput(job_record, tasks, time_limit):
        print(line)
    return status


def resubmit_failed(args, out):
    if in_queue([args.resubmit_failed]):
        raise SystemExit(f"job {args.resubmit_failed} is still in the queue; wait for it (or scancel it) first")
    job_record, tasks = records.job_summary(out, args.resubmit_failed)
    failed = records.failed_tasks(tasks)
    if not failed:
        print(f"job {args.resubmit_failed}: no failed tasks", file=sys.stderr)
        return None
    options = job_record["options"] + shlex.split(args.sbatch)
    check_no_credentials(f"job {args.resubmit_failed}'s record", shlex.join([*job_record["env"].values(), *options]))
    check_no_credentials("--sbatch", args.sbatch)
    print(f"resubmitting task(s) {array_spec(failed)} of job {args.resubmit_failed}", file=sys.stderr)
    return submit(job_record["stage"], job_record["env"], failed, options, out, args.dry_run,
                  resubmit_of=args.resubmit_failed, list_path=job_record.get("list"), inputs=job_record.get("inputs"))


def new_submission(args, out):
    check_no_credentials("--args", args.args)
    check_no_credentials("--sbatch", args.sbatch)
    env_vars = {"VMR_OUT": str(out)}
    tasks, list_path, n_lines = [0], None, None
    if args.stage not in ONE_JOB:
        lst = list_path = args.list.resolve()
        if not lst.is_file():
            raise SystemExit(f"{args.list}: no such list file")
        if args.stage == "download":
            lst, n_lines = unique_download_list(lst, out, args.dry_run)
        else:
            n_lines = len(records.read_lines(lst))
        if n_lines == 0:
            raise SystemExit(f"{args.list}: no inputs")
        if args.stage in EXTRACTION:
            check_unique_ids(lst)
        n = min(args.tasks, n_lines)
        tasks = list(range(n))
        env_vars.update(VMR_LIST=str(lst), VMR_TASKS=str(n), VMR_TASK_MIN="0")
    if args.proxies is not None:
        if not args.proxies.is_file():
            raise SystemExit(f"{args.proxies}: no such proxies file")
        env_vars["VMR_PROXIES"] = str(args.proxies.resolve())
    if args.stage in EXTRACTION:
        features = (args.features or EXTRACTION[args.stage]).split()
        names, problems = check_weights(features, shlex.split(args.args))
        if problems:
            raise SystemExit("weights missing (compute nodes may be offline, so fix this before submitting):\n  "
                             + "\n  ".join(problems))
        if names:
            print(f"weights ok: {', '.join(names)}", file=sys.stderr)
        env_vars["FEATURES"] = " ".join(features)
    if args.stage == "mgsv" and not args.dry_run:  # compute nodes are often offline: fetch and check here
        from vmr import mgsv

        if mgsv.main([*shlex.split(args.args), "--out", str(out), "--download_only"]) != 0:
            raise SystemExit("MGSV-EC could not be fetched (above); nothing submitted")
    options = shlex.split(args.sbatch)
    if args.stage in TRAINING:
        data = (args.data or REPO / DEFAULT_DATA).resolve()
        if not data.is_dir():
            raise SystemExit(f"{data}: no such data folder (write it with vmnet/prepare.py, or pass --data)")
        env_vars["VMR_DATA"] = str(data)
        if not any(o.startswith("--mem") for o in options):  # --mem, --mem-per-cpu, --mem-per-gpu
            size, mem, what = training_memory(data)
            options.insert(0, mem)
            print(f"{data}: {size / 2**30:.2f} GB {what} -> {mem} ({TRAIN_MEMORY_BASE_GB} GB + "
                  f"{TRAIN_MEMORY_PER_DATA_BYTE:g} x data; give --sbatch --mem=... to override)", file=sys.stderr)
        if args.seeds:
            tasks = list(range(len(args.seeds)))
            env_vars.update(VMR_SEEDS=" ".join(map(str, args.seeds)), VMR_TASKS=str(len(tasks)), VMR_TASK_MIN="0")
        if args.val is not None:
            if not args.val.is_file():
                raise SystemExit(f"{args.val}: no such validation CSV (--val)")
            env_vars["VMR_VAL"] = str(args.val.resolve())
    if args.ranks is not None:
        env_vars["VMR_RANKS"] = str(args.ranks.resolve())
    elif args.stage == "train_transformer" and features_segments(args.args):
        env_vars["VMR_RANKS"] = ""  # no --flow_ranks: every item is cut where its features change
    if args.args:
        env_vars["ARGS"] = args.args
    if args.gpus:
        options.insert(0, f"--gres=gpu:{args.gpus}")
        env_vars["DEVICE"] = "cuda"
    return submit(args.stage, env_vars, tasks, options, out, args.dry_run,
                  list_path=str(list_path) if list_path else None, inputs=n_lines)


def main(argv=None):
    args = parse_args(argv)
    out = (args.out or Path(DEFAULT_OUT.get(args.stage, "features"))).resolve()
    job = resubmit_failed(args, out) if args.resubmit_failed else new_submission(args, out)
    if args.wait and job is not None:
        return wait_and_report(out, job, args.poll, args.pending_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
