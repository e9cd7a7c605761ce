"""Slurm stages against a real one-node cluster (munged + slurmctld + slurmd) started by the tests.

The cluster runs as root in a temp dir on free ports with its own munge key and socket, so it never
touches a system Slurm or munge; it is torn down by PID after cancelling jobs and draining the queue
(a slurmstepd left behind ignores SIGTERM). Skipped when the Slurm binaries are not installed
(`make sysdeps` installs them as root).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FEATURES = "resnet vggish flow"
FOLDERS = ("resnet101", "vggish", "flow")
SBATCH_OPTIONS = "--cpus-per-task=1 --mem=0"  # the test node has few CPUs; one thread, as the local run

pytestmark = pytest.mark.slurm

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing_binaries():
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name):
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb():
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return int(out.split("RealMemory=")[1].split()[0])


def _alive(pid):
    """True while the process exists and is not a zombie (a container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"local Slurm: {what} not reached in {timeout} s")


class LocalSlurm:
    """start() brings the cluster up (about a second); run() calls a client with our SLURM_CONF; stop() by PID."""

    def __init__(self, root):
        self.root = Path(root)
        self.pids = {}
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def _start(self, name, argv, pid_file):
        subprocess.run(argv, check=True, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, f"{name} pid file")
        self.pids[name] = int(pid_file.read_text().split()[0])

    def start(self):
        try:
            return self._start_all()
        except (subprocess.CalledProcessError, TimeoutError) as e:
            logs = "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-2000:] for p in sorted(self.root.rglob("*.log")))
            stderr = getattr(e, "stderr", None) or b""
            raise RuntimeError(f"{e} {stderr.decode(errors='replace')}{logs}") from e

    def _start_all(self):
        r = self.root
        munge = r / "munge"
        munge.mkdir(mode=0o755, parents=True)
        os.chmod(munge, 0o755)  # munged refuses a socket dir that others cannot search
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        socket_path = munge / "munge.socket"
        self._start("munged", [_which("munged"), "--force", f"--socket={socket_path}", f"--key-file={key}",
                               f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                               f"--seed-file={munge / 'munged.seed'}"], munge / "munged.pid")
        for d in ("state", "spool"):
            (r / d).mkdir()
        cpus = os.cpu_count() or 1
        memory = min(_real_memory_mb(), 4096)
        self.conf.write_text(f"""ClusterName=vmrtest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
JobCompType=jobcomp/filetxt
JobCompLoc={r / 'jobcomp.txt'}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MinJobAge=3600
KillWait=30
MailProg=/bin/true
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=small Nodes=localhost MaxTime=5 MaxMemPerNode=1000 State=UP
""")
        self._start("slurmctld", [_which("slurmctld"), "-f", str(self.conf)], r / "slurmctld.pid")
        _wait(lambda: "is UP" in self.run("scontrol", "ping", check=False).stdout, 30, "scontrol ping UP")
        self._start("slurmd", [_which("slurmd"), "-f", str(self.conf), "-N", "localhost"], r / "slurmd.pid")
        _wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False).stdout, 30, "node idle")
        return self

    def run(self, *argv, check=True):
        return subprocess.run([_which(argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True, check=check)

    def wait_queue_empty(self, timeout=300, job=None):
        argv = ["squeue", "-h"] + (["-j", str(job)] if job else [])
        _wait(lambda: not self.run(*argv, check=False).stdout.strip(), timeout, "empty queue")

    def stop(self):
        if "slurmctld" in self.pids:
            self.run("scancel", "--full", "--user=root", check=False)
            try:
                self.wait_queue_empty(timeout=30)
            except TimeoutError:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                _wait(lambda: not _alive(pid), 15, f"{name} exit")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): run `make sysdeps` as root")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd and munged as root")
    c = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four tiny clips (two with motion, so flow has something to segment) in a folder with spaces."""
    from feature_extraction.make_sample import make_clip

    folder = tmp_path_factory.mktemp("clips") / "my videos"
    folder.mkdir()
    return [make_clip(folder / f"clip{i}.mp4", seconds=3.0, seed=i, motion=[(0.5, 2.0)] if i % 2 else None)
            for i in range(4)]


@pytest.fixture(scope="module")
def cluster_env(cluster, tmp_path_factory):
    """Environment for sbatch/submit.py: our cluster, logs in a temp dir."""
    logs = tmp_path_factory.mktemp("logs")
    return dict(os.environ, SLURM_CONF=str(cluster.conf), PYTHONUNBUFFERED="1", SBATCH_OUTPUT=str(logs / "%x-%A_%a.out"))


@pytest.fixture(scope="module")
def env(cluster_env, weights_cache):
    """The same with random weights for the extraction stages."""
    return dict(cluster_env, VMR_CACHE=str(weights_cache))


@pytest.fixture(scope="module")
def local_run(clips, weights_cache, tmp_path_factory):
    """The same extraction run locally in one process with one thread: the reference for the arrays."""
    out = tmp_path_factory.mktemp("local")
    listing = out / "videos.txt"
    listing.write_text("".join(f"{p}\n" for p in clips))
    env = dict(os.environ, VMR_CACHE=str(weights_cache), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "feature_extraction/extract.py", "--videos", str(listing), "--out", str(out),
                    "--features", *FEATURES.split(), "--device", "cpu", "--weights", "random", "--threads", "1"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    return out


def submit(env, *args, timeout=300):
    return subprocess.run([sys.executable, "slurm/submit.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def outputs(out):
    """{relative path: mtime_ns} of the per-video feature files."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for folder in FOLDERS
            for p in sorted((out / folder).glob("*")) if not p.name.startswith(("_", ".")) and p.name != "ranks.csv"}


def assert_same_arrays(out, reference, ids):
    for folder in FOLDERS:
        for vid in ids:
            got, want = np.load(out / folder / f"{vid}.npy"), np.load(reference / folder / f"{vid}.npy")
            assert got.shape == want.shape and got.dtype == want.dtype, (folder, vid)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{folder}/{vid}")


def ranks_ids(out):
    from feature_extraction.flowProcessor import read_ranks_csv

    return sorted(read_ranks_csv(out / "flow" / "ranks.csv"))


# ----------------------------------------------------------------------------- tests


def test_array_matches_local_run_and_failed_task_is_resubmitted(env, clips, local_run, tmp_path, make_clip):
    ids = [p.stem for p in clips]
    bad = clips[0].parent / "broken clip.mp4"
    bad.write_text("not a video\n")
    listing = tmp_path / "videos.txt"  # 5 lines, 4 tasks: task 0 takes lines 0 and 4 (the broken one)
    listing.write_text("".join(f"{p}\n" for p in clips) + f"\n# a comment\n{bad}\n")
    out = tmp_path / "features"
    r = submit(env, "--stage", "features", "--features", FEATURES, "--list", str(listing), "--out", str(out),
               "--tasks", "4", "--args", "--weights random", "--sbatch", SBATCH_OPTIONS, "--wait", "--poll", "0.3")
    assert r.returncode == 1, r.stdout + r.stderr
    job = r.stdout.split()[0]
    assert f"job {job} (features): 3 of 4 task(s) ok" in r.stdout
    assert f"{bad}: " in r.stdout and "task 0: exit" in r.stdout
    assert f"--resubmit_failed {job}" in r.stdout

    record = json.loads((out / ".slurm" / f"{job}.json").read_text())
    assert record["stage"] == "features" and record["N"] == 4 and record["tasks"] == [0, 1, 2, 3]
    assert record["env"]["FEATURES"] == FEATURES and record["list"] == str(listing)
    for task in range(4):  # strided lines, no shard files
        lines = (out / ".slurm" / job / f"{task}.list").read_text().splitlines()
        assert lines == [str(p) for p in (clips + [bad])[task::4]]
        task_record = json.loads((out / ".slurm" / job / f"{task}.json").read_text())
        assert (task_record["exit"] != 0) == (task == 0)
        assert [f["id"] for f in task_record["failed"]] == (["broken clip"] if task == 0 else [])
        assert Path(task_record["log"]).is_file()

    assert_same_arrays(out, local_run, ids)
    assert f"merge job {record['merge_job']}: ok" in r.stdout
    last_task = max(p.stat().st_mtime_ns for p in (out / ".slurm" / job).glob("*.json"))
    assert (out / "flow" / "ranks.csv").stat().st_mtime_ns > last_task  # rewritten by the merge job, after all tasks
    assert ranks_ids(out) == ranks_ids(local_run) == sorted(ids)
    assert (out / "flow" / "ranks.csv").read_text() == (local_run / "flow" / "ranks.csv").read_text()
    assert json.loads((out / "manifest.json").read_text())

    before = outputs(out)
    make_clip(bad.name, seconds=3.0, seed=7)  # the fixed input, in the same place
    shutil.move(str(tmp_path / bad.name), bad)
    r = submit(env, "--out", str(out), "--resubmit_failed", job, "--wait", "--poll", "0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    rerun = r.stdout.split()[0]
    assert rerun != job and "1 of 1 task(s) ok" in r.stdout
    record = json.loads((out / ".slurm" / f"{rerun}.json").read_text())
    assert record["tasks"] == [0] and record["resubmit_of"] == job and record["N"] == 4
    assert sorted(p.name for p in (out / ".slurm" / rerun).glob("*.json")) == ["0.json"]
    after = outputs(out)
    assert {k: after[k] for k in before} == before  # finished videos were not redone
    assert set(after) - set(before) == {f"{folder}/broken clip.{ext}" for folder in FOLDERS
                                        for ext in (("npy", "json") if folder == "flow" else ("npy",))}
    assert ranks_ids(out) == sorted(ids + ["broken clip"])


def test_plain_sbatch_killed_task_leaves_no_partial_file_and_rerun_completes(env, cluster, clips, local_run, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{p}\n" for p in clips))
    out = tmp_path / "features"
    job_env = dict(env, VMR_LIST=str(listing), VMR_OUT=str(out), FEATURES=FEATURES, ARGS="--weights random")

    def sbatch():
        r = subprocess.run(["sbatch", "--parsable", *SBATCH_OPTIONS.split(), "slurm/features.sl"], cwd=REPO,
                           env=job_env, capture_output=True, text=True, check=True)
        return r.stdout.strip().split(";")[0]

    job = sbatch()
    deadline = time.monotonic() + 120
    while not list(out.glob("resnet101/*.npy")):  # first video done: kill the task in the middle of the list
        assert time.monotonic() < deadline, "the job wrote nothing"
        time.sleep(0.05)
    cluster.run("scancel", job)
    cluster.wait_queue_empty(job=job)
    record = json.loads((out / ".slurm" / job / "0.json").read_text())
    assert record["exit"] != 0  # the trap recorded the kill
    done = [p.stem for p in out.glob("resnet101/*.npy")]
    assert len(done) < len(clips), "the task finished before it was killed"
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    for p in out.rglob("*.npy"):
        np.load(p)  # every visible file is complete

    job = sbatch()  # the same command again finishes the rest
    cluster.wait_queue_empty(job=job)
    assert json.loads((out / ".slurm" / job / "0.json").read_text())["exit"] == 0
    assert_same_arrays(out, local_run, [p.stem for p in clips])


def test_dry_run_prints_commands_and_submits_nothing(env, cluster, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text("a.mp4\nb.mp4\nc.mp4\n")
    out = tmp_path / "features"
    r = submit(env, "--stage", "resnet", "--list", str(listing), "--out", str(out), "--tasks", "8", "--gpus", "1",
               "--args", "--weights random", "--dry_run")
    assert r.returncode == 0, r.stderr
    array_line, merge_line = r.stdout.strip().splitlines()
    assert "sbatch --parsable --gres=gpu:1 --array=0-2 slurm/resnet.sl" in array_line  # 8 tasks capped at 3 lines
    assert "DEVICE=cuda" in array_line and "FEATURES=resnet" in array_line and f"VMR_LIST={listing}" in array_line
    assert "--dependency=afterany:" in merge_line and merge_line.endswith("slurm/merge.sl")
    assert not out.exists()
    assert cluster.run("squeue", "-h").stdout.strip() == ""

    empty_cache = tmp_path / "cache"
    r = submit(dict(env, VMR_CACHE=str(empty_cache)), "--stage", "resnet", "--list", str(listing), "--out", str(out),
               "--args", "--weights random")
    assert r.returncode != 0 and "weights missing" in r.stderr and "resnet101" in r.stderr
    assert not out.exists()


SECRET = "s3cr@t-pw"  # a proxy password containing @: neither half may show up anywhere


def assert_no_secret(*texts):
    for text in texts:
        assert "s3cr" not in text and "t-pw" not in text, text


def test_job_that_can_never_start_stops_wait_naming_the_option(cluster, cluster_env, tmp_path):
    """The hang of issue 14: an array asking for more CPUs than the node has stays PENDING (PartitionConfig)
    forever; --wait must say so within seconds, naming the sbatch option, for memory and time limits too."""
    listing = tmp_path / "urls.txt"
    listing.write_text("aaaaaaaaaaa\nbbbbbbbbbbb\n")
    cpus = os.cpu_count() or 1
    cases = [  # (sbatch options, Slurm's pending reasons for it, the change the error suggests)
        (f"--cpus-per-task={cpus + 1} --mem=0", ("PartitionConfig",),
         f"lower --cpus-per-task (e.g. --sbatch '--cpus-per-task={cpus}')"),
        ("--partition=small --time=1 --cpus-per-task=1 --mem=2000", ("PartitionConfig", "MaxMemPerLimit"),
         "lower --mem (e.g. --sbatch '--mem=1000M')"),
        ("--partition=small --cpus-per-task=1 --mem=500", ("PartitionConfig", "PartitionTimeLimit"),  # .sl asks 24 h, MaxTime 5 min
         "lower --time (e.g. --sbatch '--time=00:05:00')"),
    ]
    for i, (options, reasons, change) in enumerate(cases):
        start = time.monotonic()
        r = submit(cluster_env, "--stage", "download", "--list", str(listing), "--out", str(tmp_path / str(i)),
                   "--tasks", "2", "--sbatch", options, "--wait", "--poll", "0.2", timeout=60)
        job = r.stdout.split()[0]
        try:
            assert r.returncode == 1, r.stdout + r.stderr
            error = r.stderr.strip().splitlines()[-1]
            assert any(error.startswith(f"job {job} can never start ({reason}): ") for reason in reasons), error
            assert change in error and error.endswith(f"scancel {job}"), error
            assert time.monotonic() - start < 30
            assert cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.split() == ["PENDING"]
        finally:
            cluster.run("scancel", job)


def test_download_array_dedups_keeps_credentials_off_command_lines_and_reports_throughput(
        cluster, cluster_env, server, make_clip, tmp_path):
    """A real download array through a proxy with a password, from a proxies file, while the node is drained:
    the pending reason is printed, duplicates are removed before sharding, a task deletes only its own temp
    files, the password is nowhere (output, records, logs, status, ps, scontrol), and the run ends with videos
    per hour per task."""
    clips = {name: make_clip(f"{name}.mp4", seconds=1.0, seed=i).read_bytes() for i, name in enumerate("ab")}
    server.files.update({f"/{name}.mp4": data for name, data in clips.items()})
    urls = [f"{server.url}/{name}.mp4" for name in "ab"]
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{urls[0]}\n{urls[0]}\n{urls[1]}\n")  # unsharded, tasks 0 and 1 would both get urls[0]
    proxies = tmp_path / "proxies.txt"  # the test server is a proxy too (it ignores the credentials)
    proxies.write_text(f"# one proxy per line\nhttp://user:{SECRET}@127.0.0.1:{server.server_port}\n")
    out = tmp_path / "data"
    (out / "video").mkdir(parents=True)
    for name in ("a", "other"):  # a killed trim of one of this job's ids, and one of another job's
        (out / "video" / f"{name}.trimming.mp4").write_bytes(b"partial")

    command_lines, stop = [], threading.Event()

    def watch_ps():
        while not stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if "downloadYt.py" in text or "s3cr" in text:
                    command_lines.append(text)
            time.sleep(0.05)

    cluster.run("scontrol", "update", "nodename=localhost", "state=drain", "reason=vmr-test")
    watcher = threading.Thread(target=watch_ps, daemon=True)
    watcher.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "slurm/submit.py", "--stage", "download", "--list", str(listing), "--out", str(out),
             "--tasks", "2", "--proxies", str(proxies), "--sbatch", "--cpus-per-task=1 --mem=0",
             "--args", "--backoff 0 --max_seconds 0 --timeout 5",
             "--wait", "--poll", "0.2", "--pending_after", "1"],
            cwd=REPO, env=cluster_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err_lines = []
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any("pending for" in line for line in err_lines) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        cluster.run("scontrol", "update", "nodename=localhost", "state=resume")
    stdout = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stop.set()
    watcher.join()
    stderr = "".join(err_lines)
    assert proc.returncode == 0, stdout + stderr
    job = stdout.split()[0]
    pending = [line for line in err_lines if "pending for" in line]
    assert len(pending) == 1 and pending[0].startswith(f"job {job}_[0-1]: pending for "), stderr
    assert "DRAINED" in pending[0] or "ReqNodeNotAvail" in pending[0], pending
    assert f"{listing}:2: duplicate, skipped: {urls[0]}" in stderr
    assert f"job {job} (download): 2 of 2 task(s) ok" in stdout

    record = json.loads((out / ".slurm" / f"{job}.json").read_text())
    assert record["env"]["VMR_PROXIES"] == str(proxies) and record["inputs"] == 2 and record["list"] == str(listing)
    assert Path(record["env"]["VMR_LIST"]).read_text().split() == urls
    task_lists = [(out / ".slurm" / job / f"{t}.list").read_text().split() for t in (0, 1)]
    assert task_lists == [[urls[0]], [urls[1]]]  # each video in exactly one task
    assert all(proxied for _, _, proxied in server.requests)
    assert all((out / "video" / f"{name}.mp4").read_bytes() == data for name, data in clips.items())
    assert sorted(p.name for p in (out / "video").glob("*.trimming.*")) == ["other.trimming.mp4"]

    assert any("--proxies" in line and str(proxies) in line for line in command_lines), command_lines
    logs = [json.loads((out / ".slurm" / job / f"{t}.json").read_text())["log"] for t in (0, 1)]
    assert_no_secret(stdout, stderr, *command_lines, *(Path(log).read_text() for log in logs),
                     cluster.run("scontrol", "show", "job", "-dd", job).stdout,
                     *(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()))

    tasks = [json.loads((out / ".slurm" / job / f"{t}.json").read_text()) for t in (0, 1)]
    rate = sum(t["inputs"] for t in tasks) / sum(t["seconds"] for t in tasks) * 3600
    throughput, estimate = stdout.strip().splitlines()[-2:]
    assert throughput.startswith(f"throughput: {rate:,.1f} videos/hour per task (2 videos in "), throughput
    assert estimate.startswith("estimate for the whole list (2 videos): "), estimate
    assert estimate.endswith("within the 24 h time limit at the slowest task's rate: --tasks 1 or more"), estimate


def test_credentials_are_refused_on_command_lines_and_never_printed(cluster, cluster_env, tmp_path, capsys):
    from feature_extraction import downloadYt

    assert downloadYt.redact(f"proxy http://user:{SECRET}@host:8080/x, https://www.youtube.com/@channel") == \
        "proxy http://***@host:8080/x, https://www.youtube.com/@channel"
    listing = tmp_path / "urls.txt"
    listing.write_text("aaaaaaaaaaa\n")
    with pytest.raises(SystemExit) as e:
        downloadYt.main(["--list", str(listing), "--out", str(tmp_path / "dl"), "--proxy", f"http://u:{SECRET}@h:1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--proxies FILE" in err and "http://***@h:1" in err
    assert_no_secret(err)

    out = tmp_path / "data"
    base = ["--stage", "download", "--list", str(listing), "--out", str(out)]
    for flag in ("--args", "--sbatch"):
        r = submit(cluster_env, *base, flag, f"--proxy http://user:{SECRET}@127.0.0.1:9", "--dry_run")
        assert r.returncode == 1 and r.stdout == "", r.stdout
        assert r.stderr.startswith(f"{flag}: --proxy http://***@127.0.0.1:9: credentials in a URL") and \
            "--proxies FILE" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert_no_secret(r.stderr)

    proxies = tmp_path / "proxies.txt"
    proxies.write_text(f"http://user:{SECRET}@127.0.0.1:9\n")
    r = submit(cluster_env, *base, "--proxies", str(proxies), "--dry_run")
    assert r.returncode == 0 and f"VMR_PROXIES={proxies}" in r.stdout, r.stdout + r.stderr
    assert_no_secret(r.stdout, r.stderr)
    assert not out.exists()

    r = submit(cluster_env, *base, "--proxies", str(proxies), "--sbatch=--partition=nowhere")
    assert r.returncode == 1 and r.stderr.startswith("sbatch failed: ") and "change --partition" in r.stderr, r.stderr
    assert_no_secret(r.stdout, r.stderr, *(p.read_text() for p in out.rglob("*") if p.is_file()))
    assert not list(out.glob(".slurm/*.json"))
    assert cluster.run("squeue", "-h").stdout.strip() == ""


def test_training_job_asks_for_memory_from_its_data(cluster, cluster_env, tmp_path):
    import numpy as np

    data, elsewhere = tmp_path / "data", tmp_path / "features"
    for folder in (data / "video", data / "audio", elsewhere):
        folder.mkdir(parents=True)
    rows = 5 * 2**30 // 4 // (512 * 4)  # 1.25 GiB of float32 rows per file, written sparse
    np.lib.format.open_memmap(elsewhere / "x.npy", mode="w+", dtype=np.float32, shape=(rows, 512))
    np.lib.format.open_memmap(data / "audio" / "x.npy", mode="w+", dtype=np.float32, shape=(rows, 512))
    (data / "video" / "x.npy").symlink_to(elsewhere / "x.npy")  # prepare.py links into the feature folders
    for split in ("train", "test"):
        (data / f"{split}.csv").write_text("ID\nx\n")
    base = ["--stage", "train_vmnet", "--data", str(data), "--out", str(tmp_path / "run")]

    r = submit(cluster_env, *base, "--dry_run")
    assert r.returncode == 0, r.stderr
    assert "sbatch --parsable --mem=8G slurm/train_vmnet.sl" in r.stdout  # 4 GB + 1.5 x 2.5 GiB
    assert f"{data}: 2.50 GB of features -> --mem=8G" in r.stderr
    r = submit(cluster_env, *base, "--sbatch=--mem=1G", "--dry_run")
    assert "sbatch --parsable --mem=1G slurm/train_vmnet.sl" in r.stdout and "--mem=8G" not in r.stdout

    r = submit(cluster_env, *base, "--sbatch=--cpus-per-task=1")  # the test node has 4 GB: sbatch refuses
    if r.returncode == 0:
        cluster.run("scancel", r.stdout.split()[0])
    assert r.returncode == 1 and r.stderr.splitlines()[-2].startswith("sbatch failed: "), r.stderr
    assert "change --mem (submit.py --sbatch '...')" in r.stderr
    assert not (tmp_path / "run").exists()
    r = submit(cluster_env, *base[:2], "--data", str(tmp_path / "nowhere"), "--dry_run")
    assert r.returncode == 1 and "nowhere: no such data folder" in r.stderr

    from vmr.splits import write_split  # split folders: the 2.5 GiB above is not held, only the test gallery in float32

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 3)):
        write_split(data / split, ((f"{split}{i}", rng.random((1000, 1024), np.float32), rng.random((1000, 128), np.float32))
                                   for i in range(n)), "float16")
    r = submit(cluster_env, *base, "--dry_run")
    assert r.returncode == 0 and "sbatch --parsable --mem=5G slurm/train_vmnet.sl" in r.stdout  # 4 GB + 1.5 x 0.01 GiB
    assert f"{data}: 0.01 GB of test gallery (float32" in r.stderr


def run_with_stand_in(script, tmp_path, **variables):
    """Run slurm/<script> outside Slurm (the .sl files run without it too) with a stand-in interpreter.

    Returns (exit status, train.py argv, records.py argv, stderr)."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'argv'}\n")  # the exit trap runs it again (records.py)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VMR_"))}
    env.update(VMR_PYTHON=str(fake), VMR_REPO=str(REPO), **variables)
    r = subprocess.run(["bash", str(REPO / "slurm" / script)], env=env, capture_output=True, text=True)
    lines = (tmp_path / "argv").read_text().splitlines()
    (tmp_path / "argv").unlink()
    train = next((line.split() for line in lines if "train.py" in line), None)
    record = next(line.split() for line in lines if "records.py" in line)
    return r.returncode, train, record, r.stderr


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("script", ["train_vmnet.sl", "train_transformer.sl"])
def test_training_scripts_read_split_folders_when_present(script, tmp_path):
    data = tmp_path / "data"
    (data / "video").mkdir(parents=True)
    variables = dict(VMR_DATA=str(data), VMR_OUT=str(tmp_path / "run"))
    _, argv, _, _ = run_with_stand_in(script, tmp_path, **variables)
    assert flag(argv, "--train_data_dir") == flag(argv, "--test_data_dir") == str(data)
    for split in ("train", "test"):
        (data / split).mkdir()
        (data / split / "offsets.npy").touch()
    _, argv, _, _ = run_with_stand_in(script, tmp_path, **variables)
    assert flag(argv, "--train_data_dir") == str(data / "train")
    assert flag(argv, "--test_data_dir") == str(data / "test")
    assert flag(argv, "--train_csv_path") == str(data / "train.csv")


@pytest.mark.parametrize("script", ["train_vmnet.sl", "train_transformer.sl"])
def test_training_scripts_run_one_seed_per_array_task(script, tmp_path):
    data, out, val = tmp_path / "data", tmp_path / "run", tmp_path / "data" / "val.csv"
    common = dict(VMR_DATA=str(data), VMR_OUT=str(out))
    code, plain, _, _ = run_with_stand_in(script, tmp_path, **common)  # no VMR_SEEDS: one run into VMR_OUT, as before
    assert code == 0 and flag(plain, "--save_dir") == str(out) and "--seed" not in plain and "--val_csv_path" not in plain

    seeds = dict(common, VMR_SEEDS="3 7", VMR_VAL=str(val), VMR_TASK_MIN="0", SLURM_ARRAY_JOB_ID="55")
    for task, seed in enumerate((3, 7)):
        code, argv, record, _ = run_with_stand_in(script, tmp_path, **seeds, SLURM_ARRAY_TASK_ID=str(task))
        expected = [str(out / f"seed{seed}") if a == str(out) else a for a in plain]  # only the save dir changes ...
        assert code == 0 and argv == expected + ["--seed", str(seed), "--val_csv_path", str(val)]  # ... and these come after
        assert flag(record, "--record") == str(out / ".slurm" / "55" / f"{task}.json")  # records stay in VMR_OUT

    code, argv, record, err = run_with_stand_in(script, tmp_path, **seeds, SLURM_ARRAY_TASK_ID="2")
    assert code == 2 and argv is None and flag(record, "--exit") == "2"
    assert "task 2 (index 2): VMR_SEEDS has 2 seed(s) (3 7): submit an array of that size (sbatch --array=0-1)" in err
    code, argv, _, err = run_with_stand_in(script, tmp_path, **seeds)  # sbatch without --array
    assert code == 2 and argv is None and "VMR_SEEDS has 2 seeds (3 7) but this is not an array task" in err


def test_transformer_script_without_flow_ranks(tmp_path):
    common = dict(VMR_DATA=str(tmp_path / "data"), VMR_OUT=str(tmp_path / "run"))
    _, argv, _, _ = run_with_stand_in("train_transformer.sl", tmp_path, **common)
    assert flag(argv, "--flow_ranks") == "features/flow/ranks.csv"  # unset: the default, as before
    _, argv, _, _ = run_with_stand_in("train_transformer.sl", tmp_path, **common, VMR_RANKS="",
                                      ARGS="--segments_from features")
    assert "--flow_ranks" not in argv and argv[-2:] == ["--segments_from", "features"]


def test_dry_run_with_seeds_shows_one_array(tmp_path):
    data = tmp_path / "data"
    (data / "video").mkdir(parents=True)
    val = data / "val.csv"
    val.write_text("ID\n")
    out = tmp_path / "runs"
    r = submit(os.environ, "--stage", "train_transformer", "--data", str(data), "--out", str(out), "--seeds", "0", "1",
               "2", "--val", str(val), "--args", "--segments_from features", "--dry_run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("sbatch --parsable --mem=4G --array=0-2 slurm/train_transformer.sl"), r.stdout
    assert f"VMR_SEEDS='0 1 2' VMR_TASKS=3 VMR_TASK_MIN=0 VMR_VAL={val} VMR_RANKS='' " in r.stdout
    assert not out.exists()
    r = submit(os.environ, "--stage", "train_vmnet", "--data", str(data), "--out", str(out), "--dry_run")
    assert "--array" not in r.stdout and "VMR_SEEDS" not in r.stdout and "VMR_RANKS" not in r.stdout

    for extra, error in ((["--seeds", "1", "2", "1"], "--seeds: 1 given twice"),
                         (["--seeds", "1", "2", "--args=--seed 5"], "--seeds and --seed in --args"),
                         (["--seeds", "1", "--val", str(tmp_path / "nope.csv")], "nope.csv: no such validation CSV (--val)")):
        r = submit(os.environ, "--stage", "train_vmnet", "--data", str(data), "--out", str(out), *extra, "--dry_run")
        assert r.returncode != 0 and error in r.stderr, r.stderr
    r = submit(os.environ, "--stage", "resnet", "--list", str(val), "--seeds", "0", "--dry_run")
    assert r.returncode == 2 and "--seeds is for --stage train_transformer or train_vmnet" in r.stderr


def test_seed_array_trains_each_seed_into_its_own_run(cluster_env, tmp_path):
    """A real array of 2 seeds, as on MGSV-EC: a published val split and no flow ranks.csv (--segments_from features)."""
    import torch

    from vmr.synthetic import Settings, generate, write_dataset

    data = write_dataset(tmp_path / "data", generate(Settings(n=24, regime="library", video_dim=16, audio_dim=8)), 8)
    ids = (data / "train.csv").read_text().split()[1:]
    (data / "val.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids[:4]))
    (data / "train.csv").write_text("ID\n" + "".join(f"{v}\n" for v in ids[4:]))
    out = tmp_path / "runs"
    r = submit(cluster_env, "--stage", "train_transformer", "--data", str(data), "--out", str(out), "--seeds", "5", "9",
               "--val", str(data / "val.csv"), "--args", "--segments_from features --epochs 1", "--sbatch", SBATCH_OPTIONS,
               "--wait", "--poll", "0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    job = r.stdout.split()[0]
    assert f"job {job} (train_transformer): 2 of 2 task(s) ok" in r.stdout
    record = json.loads((out / ".slurm" / f"{job}.json").read_text())
    assert record["tasks"] == [0, 1] and record["env"]["VMR_SEEDS"] == "5 9" and record["env"]["VMR_RANKS"] == ""
    for task, seed in enumerate((5, 9)):
        run = out / f"seed{seed}"
        assert json.loads((run / "metrics.json").read_text())
        args = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["args"]
        assert args["seed"] == seed and args["val_csv_path"] == str(data / "val.csv") and args["save_dir"] == str(run)
        assert args["flow_ranks"] is None and args["segments_from"] == "features"  # VMR_RANKS='' reached the task
        assert json.loads((out / ".slurm" / job / f"{task}.json").read_text())["exit"] == 0

    task_record = out / ".slurm" / job / "1.json"  # seed 9 failed: a resubmission reruns task 1 alone, with seed 9
    task_record.write_text(json.dumps(dict(json.loads(task_record.read_text()), exit=1)))
    r = submit(cluster_env, "--out", str(out), "--resubmit_failed", job, "--dry_run")
    assert r.returncode == 0 and "VMR_SEEDS='5 9' VMR_TASKS=2 VMR_TASK_MIN=0 " in r.stdout, r.stdout + r.stderr
    assert r.stdout.strip().endswith("--array=1 slurm/train_transformer.sl"), r.stdout
