"""Submit a VMR stage to Slurm as a job array, with the merge step as a dependent job.

    python slurm/submit.py --stage features --list videos.txt --out features --tasks 64 [--gpus 1] [--wait]
    python slurm/submit.py --out features --resubmit_failed 1234 [--wait]

Task i of N takes lines i, i+N, ... of the list (see slurm/common.sh). Weights are checked (and official
ones downloaded) here, before submitting, because compute nodes are often offline. The job record
OUT/.slurm/<jobid>.json {stage, list, N, tasks, env, ...} and the task records OUT/.slurm/<jobid>/<task>.json
(slurm/records.py) outlive squeue: --wait and --resubmit_failed read them.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import records

REPO = Path(__file__).resolve().parents[1]

EXTRACTION = {"features": "resnet clip vggish", "resnet": "resnet", "clip": "clip", "vggish": "vggish",
              "i3d": "i3d", "flow": "flow"}  # stage -> default FEATURES
STAGES = [*EXTRACTION, "download", "train_vmnet", "train_transformer"]
TRAINING = {"train_vmnet", "train_transformer"}  # one job, no list
DEFAULT_OUT = {"download": "data/SymMV", "train_vmnet": "runs/vmnet", "train_transformer": "runs/transformer"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=STAGES, help="which slurm/<stage>.sl to submit")
    p.add_argument("--list", type=Path, help="file with one input per line (videos; URLs for download); "
                   "not used by the training stages")
    p.add_argument("--out", type=Path, help="VMR_OUT: output folder (training: the save dir); records go to "
                   "OUT/.slurm/ (default: features; data/SymMV for download; runs/vmnet, runs/transformer for training)")
    p.add_argument("--tasks", type=int, default=1, help="array size N, capped at the number of list lines (default: 1)")
    p.add_argument("--features", help="FEATURES for the extraction stages (default: the stage's own, e.g. 'resnet' "
                   "for --stage resnet, 'resnet clip vggish' for --stage features)")
    p.add_argument("--args", default="", help="ARGS: extra flags for the stage's script, e.g. '--weights random' "
                   "(write --args=--pca when it is a single flag)")
    p.add_argument("--data", type=Path, help="VMR_DATA for the training stages (default: the .sl file's)")
    p.add_argument("--ranks", type=Path, help="VMR_RANKS (ranks.csv) for --stage train_transformer (default: the .sl file's)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per task: adds --gres=gpu:N and sets DEVICE=cuda (default: 0)")
    p.add_argument("--sbatch", default="", help="more sbatch options, e.g. '--partition=gpu --time=2:00:00 "
                   "--cpus-per-task=8'; they override the #SBATCH lines")
    p.add_argument("--dry_run", action="store_true", help="print the sbatch commands instead of running them")
    p.add_argument("--wait", action="store_true", help="poll until the jobs leave the queue, then print which "
                   "tasks failed and why; exit status 1 when any did")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between squeue polls with --wait (default: 10)")
    p.add_argument("--resubmit_failed", metavar="JOBID", help="rerun only the failed (or record-less) tasks of "
                   "this job of OUT, with its recorded settings (--sbatch options given now are added)")
    args = p.parse_args(argv)
    if args.resubmit_failed is None:
        if args.stage is None:
            p.error("--stage is required (or --resubmit_failed JOBID)")
        if args.stage not in TRAINING and args.list is None:
            p.error(f"--stage {args.stage} needs --list")
    if args.tasks < 1:
        p.error("--tasks must be >= 1")
    return args


def required_checkpoints(features, extract_args):
    """(checkpoint names, 'official' or 'random') that extract.py would load for FEATURES and its flags.

    Reads only the flags that choose a checkpoint (defaults as in the feature modules), so that
    submitting does not import torch and every model module.
    """
    from feature_extraction.extract import TOKENS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--weights", choices=["official", "random"], default="official")
    p.add_argument("--resnet", type=int, default=101)
    p.add_argument("--pca", action="store_true")
    p.add_argument("--i3d_imagenet", action="store_true")
    p.add_argument("--flow_method", default="raft")
    args, _ = p.parse_known_args(extract_args)
    tokens = list(TOKENS) if "all" in features else features
    unknown = [t for t in tokens if t not in TOKENS]
    if unknown:
        raise SystemExit(f"unknown FEATURES token(s) {' '.join(unknown)}; known: {' '.join(TOKENS)} all")
    names = []
    if "resnet" in tokens:
        names.append(f"resnet{args.resnet}")
    if "clip" in tokens:
        names.append("clip_vit_b32")
    if "vggish" in tokens:
        names += ["vggish", "vggish_pca"] if args.pca else ["vggish"]
    if "i3d" in tokens:
        names += ["i3d_rgb_imagenet", "i3d_flow_imagenet"] if args.i3d_imagenet else ["i3d_rgb", "i3d_flow"]
        if args.flow_method == "raft":
            names.append("raft_large")
    return names, args.weights


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
    from feature_extraction import extract

    dups = extract.duplicate_stems(extract.list_videos([str(list_path)]))
    if dups:
        raise SystemExit(f"{list_path}: inputs with the same id (file stem) would overwrite each other's features:\n"
                         + "\n".join(f"  {stem}: {', '.join(map(str, ps))}" for stem, ps in dups.items()))


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
        raise SystemExit(f"sbatch failed: {result.stderr.strip() or result.stdout.strip()}\n  {show(env_vars, argv)}")
    return result.stdout.strip().split(";")[0]


def array_spec(tasks):
    """'0-3' for consecutive ids, else '0,5,7'."""
    if tasks == list(range(tasks[0], tasks[-1] + 1)):
        return f"{tasks[0]}-{tasks[-1]}" if len(tasks) > 1 else str(tasks[0])
    return ",".join(map(str, tasks))


def submit(stage, env_vars, tasks, options, out, dry_run, resubmit_of=None):
    """Submit the array (and the merge job for extraction stages); write the job record."""
    array = None if stage in TRAINING else array_spec(tasks)
    argv = sbatch_argv(f"{stage}.sl", array, options)
    merge_vars = {"VMR_OUT": env_vars["VMR_OUT"]}
    if dry_run:
        print(show(env_vars, argv))
        if stage in EXTRACTION:
            print(show(merge_vars, sbatch_argv("merge.sl", None, [], dependency="<array job id>")))
        return None
    job = run_sbatch(env_vars, argv)
    merge = run_sbatch(merge_vars, sbatch_argv("merge.sl", None, [], dependency=job)) if stage in EXTRACTION else None
    record = {"job": job, "stage": stage, "script": f"slurm/{stage}.sl", "list": env_vars.get("VMR_LIST"),
              "N": int(env_vars.get("VMR_TASKS", 1)), "tasks": tasks, "env": env_vars, "sbatch": argv,
              "options": options, "merge_job": merge, "resubmit_of": resubmit_of,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    records.write_json(records.job_record_path(out, job), record)
    print(job)
    print(f"submitted {stage}: job {job}, {len(tasks)} task(s)" + (f", merge job {merge}" if merge else "")
          + f"; records in {records.records_dir(out)}", file=sys.stderr)
    return job


def in_queue(jobs):
    result = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True)
    return result.returncode == 0 and bool(result.stdout.strip())


def wait_and_report(out, job, poll):
    """Wait until the job (and its merge job) left the queue; print failures; return the exit status."""
    job_record = json.loads(records.job_record_path(out, job).read_text())
    jobs = [job] + ([job_record["merge_job"]] if job_record.get("merge_job") else [])
    while in_queue(jobs):
        time.sleep(poll)
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
    print(f"resubmitting task(s) {array_spec(failed)} of job {args.resubmit_failed}", file=sys.stderr)
    return submit(job_record["stage"], job_record["env"], failed, options, out, args.dry_run,
                  resubmit_of=args.resubmit_failed)


def new_submission(args, out):
    env_vars = {"VMR_OUT": str(out)}
    tasks = [0]
    if args.stage not in TRAINING:
        lst = args.list.resolve()
        if not lst.is_file():
            raise SystemExit(f"{args.list}: no such list file")
        n_lines = len(records.read_lines(lst))
        if n_lines == 0:
            raise SystemExit(f"{args.list}: no inputs")
        if args.stage in EXTRACTION:
            check_unique_ids(lst)
        n = min(args.tasks, n_lines)
        tasks = list(range(n))
        env_vars.update(VMR_LIST=str(lst), VMR_TASKS=str(n), VMR_TASK_MIN="0")
    if args.stage in EXTRACTION:
        features = (args.features or EXTRACTION[args.stage]).split()
        names, problems = check_weights(features, shlex.split(args.args))
        if problems:
            raise SystemExit("weights missing (compute nodes may be offline, so fix this before submitting):\n  "
                             + "\n  ".join(problems))
        if names:
            print(f"weights ok: {', '.join(names)}", file=sys.stderr)
        env_vars["FEATURES"] = " ".join(features)
    if args.data is not None:
        env_vars["VMR_DATA"] = str(args.data.resolve())
    if args.ranks is not None:
        env_vars["VMR_RANKS"] = str(args.ranks.resolve())
    if args.args:
        env_vars["ARGS"] = args.args
    options = shlex.split(args.sbatch)
    if args.gpus:
        options.insert(0, f"--gres=gpu:{args.gpus}")
        env_vars["DEVICE"] = "cuda"
    return submit(args.stage, env_vars, tasks, options, out, args.dry_run)


def main(argv=None):
    args = parse_args(argv)
    out = (args.out or Path(DEFAULT_OUT.get(args.stage, "features"))).resolve()
    job = resubmit_failed(args, out) if args.resubmit_failed else new_submission(args, out)
    if args.wait and job is not None:
        return wait_and_report(out, job, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
