"""Job and task records under OUT/.slurm/, the only trace a finished Slurm job leaves that we can rely on.

Finished jobs vanish from squeue and scontrol after MinJobAge, and real clusters rarely give users a
job-completion file, so:
- submit.py writes `OUT/.slurm/<jobid>.json` {stage, script, list, N, tasks, env, merge_job, ...};
- every array task writes `OUT/.slurm/<jobid>/<task>.json` {exit, failed, log, inputs, ...} when it exits
  (a bash trap in slurm/common.sh runs `python slurm/records.py task ...`), failed = the inputs the
  stage reported as `path: reason` in the task's log.
A task without a record after its job left the queue was killed before the trap could run (SIGKILL,
node failure) and counts as failed.

Run from a task: `python slurm/records.py task --record R --exit CODE --started EPOCH --inputs LIST --log LOG
[--log LOG2] [--status_csv OUT/status.csv]` (downloads: failed inputs come from the downloader's status.csv).
Log lines and reasons are stored with URL credentials redacted.
"""
import argparse
import csv
import json
import math
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from feature_extraction.atomic import write_json  # noqa: E402
from feature_extraction.downloadYt import redact  # noqa: E402


def records_dir(out):
    return Path(out) / ".slurm"


def job_record_path(out, job):
    return records_dir(out) / f"{job}.json"


def task_record_path(out, job, task):
    return records_dir(out) / str(job) / f"{task}.json"


def read_lines(path):
    """The inputs of a list file: one per line, blank lines and `#` comments skipped (the same rule as common.sh)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def failed_inputs(inputs, log_text):
    """[{input, id, reason}] for each input the stage reported as `input: reason`."""
    failed = []
    for inp in inputs:
        prefixes = (f"{inp}: ", f"{Path(inp)}: ")  # as written in the list, or as extract.py prints a Path
        reasons = [line[len(p):] for line in log_text.splitlines() for p in prefixes if line.startswith(p)]
        if reasons:
            failed.append({"input": inp, "id": Path(inp).stem, "reason": reasons[-1].strip()})
    return failed


def failed_downloads(inputs, status_csv):
    """[{input, id, reason}] for the inputs whose row in the downloader's status.csv is a failure."""
    from feature_extraction.downloadYt import FAILURE_STATUSES

    wanted = set(inputs)
    with open(status_csv, newline="", encoding="utf-8") as f:
        return [{"input": row["url"], "id": row["id"], "reason": f"{row['status']}: {row['message']}"}
                for row in csv.DictReader(f)
                if row["status"] in FAILURE_STATUSES and (row["url"] in wanted or row["id"] in wanted)]


def write_task_record(path, exit_code, inputs, logs, status_csv=None, started=None):
    logs = [str(p) for p in dict.fromkeys(logs) if p]
    text = "\n".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in logs if Path(p).is_file())
    if status_csv and Path(status_csv).is_file():
        failed = failed_downloads(inputs, status_csv)
    else:
        failed = failed_inputs(inputs, text)
    now = time.time()
    record = {
        "exit": exit_code,
        "failed": [{k: redact(v) for k, v in f.items()} for f in failed],
        "inputs": len(inputs),
        "log": logs[0] if logs else None,
        "tail": [redact(line) for line in text.strip().splitlines()[-5:]] if exit_code else [],
        "host": socket.gethostname(),
        "seconds": round(now - started, 1) if started else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
    }
    write_json(path, record)
    return record


def job_summary(out, job):
    """(job record, {task: task record or None}) for the tasks the job ran."""
    job_record = json.loads(job_record_path(out, job).read_text())
    tasks = {}
    for task in job_record["tasks"]:
        path = task_record_path(out, job, task)
        tasks[task] = json.loads(path.read_text()) if path.exists() else None
    return job_record, tasks


def failed_tasks(tasks):
    return [t for t, rec in tasks.items() if rec is None or rec["exit"] != 0]


def describe(task, record):
    """One line per failed task, then one per failed input: what a user reads after --wait."""
    if record is None:
        return [f"task {task}: no record (killed before it could write one, e.g. SIGKILL, time limit or node failure)"]
    lines = [f"task {task}: exit {record['exit']}, {len(record['failed'])} failed, log {record['log']}"]
    lines += [f"  {f['input']}: {f['reason']}" for f in record["failed"]]
    if not record["failed"]:
        lines += [f"  | {line}" for line in record.get("tail", [])]
    return lines


def hours_text(hours):
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} days"


def throughput(job_record, tasks, time_limit_s=None):
    """Lines for the end of --wait: videos per hour per task, measured from the task records (inputs over the
    seconds from the task's start to its record), and what the whole list takes at that rate, to size an array."""
    timed = {t: r for t, r in tasks.items() if r and r.get("seconds") and r["inputs"]}
    if not timed:
        return []
    videos = sum(r["inputs"] for r in timed.values())
    task_hours = sum(r["seconds"] for r in timed.values()) / 3600
    rate = videos / task_hours
    slowest = min(timed, key=lambda t: timed[t]["inputs"] / timed[t]["seconds"])
    slowest_rate = timed[slowest]["inputs"] / timed[slowest]["seconds"] * 3600
    lines = [f"throughput: {rate:,.1f} videos/hour per task ({videos} videos in {task_hours:,.2f} task-hours over "
             f"{len(timed)} task(s); slowest task {slowest}: {slowest_rate:,.1f}/hour)"]
    total, n = job_record.get("inputs"), job_record["N"]
    if total:
        line = (f"estimate for the whole list ({total:,} videos): {total / rate:,.1f} task-hours, "
                f"{hours_text(total / rate / n)} with {n} task(s) running at once")
        if time_limit_s:
            needed = math.ceil(total / (slowest_rate * time_limit_s / 3600))
            line += (f"; to finish within the {time_limit_s / 3600:g} h time limit at the slowest task's rate: "
                     f"--tasks {needed} or more")
        lines.append(line)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write an array task's record (called by the trap in slurm/common.sh).")
    sub = parser.add_subparsers(dest="command", required=True)
    task = sub.add_parser("task", help="write OUT/.slurm/<jobid>/<task>.json")
    task.add_argument("--record", type=Path, required=True, help="record path to write")
    task.add_argument("--exit", type=int, required=True, help="exit status of the task's command")
    task.add_argument("--started", type=float, help="Unix time the task started (for its videos per hour)")
    task.add_argument("--inputs", type=Path, help="the task's own list of inputs (absent for single-run stages)")
    task.add_argument("--log", action="append", default=[], help="the task's Slurm log file(s), searched for `input: reason`")
    task.add_argument("--status_csv", type=Path, help="downloads: take the failed inputs from this status.csv instead")
    args = parser.parse_args(argv)
    inputs = read_lines(args.inputs) if args.inputs and args.inputs.is_file() else []
    write_task_record(args.record, args.exit, inputs, args.log, args.status_csv, args.started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
