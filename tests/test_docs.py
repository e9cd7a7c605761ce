"""The documentation site builds with --strict, and its command reference is each script's live --help."""
import html
import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `make docs` builds it (same command line), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_make_docs_runs_this_build():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docs: setup\n\t.*-m mkdocs build --strict --site-dir site$", makefile, re.M)


def test_every_page_is_built(site):
    for page in ("getting-started", "feature-extraction", "dataset", "vmnet", "transformer", "evaluation",
                 "zeroshot", "mgsv", "scale", "benchmarks", "reference", "dependencies"):
        assert (site / page / "index.html").is_file(), page
    assert "Protocol: how every reported number is computed" in (site / "evaluation" / "index.html").read_text()


# Each way a script is run, each checked in a process of its own: a plain script, scripts that import torch, `-m`
# modules, a script that puts its own folder on sys.path, a benchmark. (Every script of the page was compared
# once when the page was written; a process per script costs about 2 s each where torch is imported.)
LIVE = ("feature_extraction/extract.py", "feature_extraction/downloadYt.py", "transformer/retrieve.py",
        "vmr/report.py", "feature_extraction/merge.py", "bench/gpu.py", "bench/bench_models.py", "slurm/submit.py")


def test_command_reference_is_each_scripts_live_help(site):
    hooks = load_hooks()
    page = (site / "reference" / "index.html").read_text()
    blocks = [html.unescape(b) for b in re.findall(r'<pre><code class="language-text">(.*?)</code></pre>', page, re.S)]
    assert len(blocks) == len(hooks.COMMANDS)
    shown = {path: block for (path, _), block in zip(hooks.COMMANDS, blocks)}
    commands = dict(hooks.COMMANDS)
    env = dict(os.environ, COLUMNS=hooks.HELP_COLUMNS)

    def live(command):  # exactly what a user runs
        return subprocess.run(hooks.help_argv(command), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300, check=True).stdout

    with ThreadPoolExecutor(2) as pool:
        texts = dict(zip(LIVE, pool.map(live, [commands[path] for path in LIVE])))
    for path, text in texts.items():
        assert text.startswith("usage: "), path
        assert shown[path].rstrip() == text.rstrip(), path
    for path, block in shown.items():
        assert block.startswith("usage: ") and f"Run as <code>{commands[path]}</code>" in page, path


def test_reference_lists_every_command_line_script():
    """Every file that runs as a script is a command-line script (its own parser, or a thin wrapper such as
    vmnet/test.py passing its scorer to vmr.evaluation.main), so each one must be on the page."""
    hooks = load_hooks()
    scripts = set()
    for folder in ("feature_extraction", "vmr", "vmnet", "transformer", "zeroshot", "slurm", "bench", "lists"):
        for p in (REPO / folder).glob("*.py"):
            if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M):
                scripts.add(str(p.relative_to(REPO)))
    assert {"vmnet/test.py", "transformer/retrieve.py", "vmr/mgsv.py", "bench/bench_moments.py"} <= scripts
    assert {path for path, _ in hooks.COMMANDS} == scripts


def test_benchmark_tables_are_rendered_from_the_json(site):
    import json

    hooks = load_hooks()
    recorded = json.loads((REPO / "docs" / "bench" / "results.json").read_text())
    page = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- bench:models -->" not in page and "docs/bench/results.json" in page
    assert "<td>Transformer aligned</td>\n<td>0.800</td>" in page  # trajectory regime, video to music R@1
    # a changed JSON changes the table: the numbers come from the file, not from the page's text
    recorded["models"]["trajectory"]["table"]["aligned"]["video_to_music"]["R@1"] = 0.123
    table = hooks.models_markdown(recorded["models"])
    assert "| Transformer aligned | 0.123 | 0.972 | 1 |" in table
    assert "- vmnet: 199.3 s wall, 137 epochs, 1.21 s/epoch, peak RSS 1176 MiB" in table

    # the current format (settings over seeds), from bench_models.summary itself: two seeds of four queries
    bench = hooks.bench_models()
    ranks = {"vmnet": ([1, 1, 2, 3], [1, 2, 2, 3]), "transformer": ([1, 1, 1, 2], [1, 1, 1, 1]),
             "cca": ([2, 2, 1, 3], [3, 2, 1, 1]), "aligned_linear": ([1, 2, 3, 3], [2, 2, 2, 1])}
    runs = [{**{key: {"ranks": r[seed], "ious": [0.9, 0.8, 0.1, 0.75], "R@10": 1.0, "mIoU": 0.6} for key, r in ranks.items()},
             "chance": {"R@1": 1 / 3, "R@10": 1.0, "mIoU": 0.5, "MoR@1 IoU>0.7": 0.1}} for seed in (0, 1)]
    setting = {"regime": "library", "family": "walk", "seeds": [0, 1], "queries": 4, "tracks": 3,
               "summary": bench.summary(runs, True),
               "runs": [{"training": {"vmnet": {"train_seconds": 9.5, "epochs": 3, "seconds_per_epoch": 1.1, "peak_rss_mib": 700}}}]}
    table = hooks.models_markdown({"library:walk": setting, "png": "bench/models.png"})
    assert "**library:walk** (4 test queries, 3 tracks, seeds 0, 1;" in table
    assert "| | R@1 | R@10 | mIoU | MoR@1 IoU>0.7 |" in table
    # VM-NET R@1: 2/4 and 1/4 -> 0.375 ± 0.125; MoR@1 (rank 1 and IoU > 0.7): 2/4 and 1/4
    assert "| VM-NET | 0.375 ± 0.125 | 1.000 ± 0.000 | 0.600 ± 0.000 | 0.375 ± 0.125 |" in table
    assert "| chance | 0.333 ± 0.000 |" in table
    assert "- transformer - cca (R@1): +0.5000, 95% interval [" in table
    assert "- vmnet training, per seed: 9.5 s wall, 3 epochs, 1.1 s/epoch, peak RSS 700 MiB" in table
    estimate = {"videos": 600, "test_queries": 150, "vmnet": {"seconds_per_training_video_epoch": 0.002, "test_seconds": 9.0,
                "test_seconds_per_pair": 0.0004, "mgsv_epoch_hours": 0.03, "mgsv_test_hours": 0.44}}
    table = hooks.models_markdown({"library:walk": setting, "mgsv_estimate": estimate})
    assert "- vmnet: one epoch on MGSV-EC about 0.03 h (0.002 s per training video), its test about 0.44 h" in table

    scale = (site / "scale" / "index.html").read_text()
    assert "<!-- bench:" not in scale and "<td>1,293 MiB</td>\n<td>1,436 MiB</td>\n<td><strong>1.11</strong></td>" in scale
    assert "<td>Transformer segments, 1,200,000 x 64</td>\n<td>307 MB</td>" in scale
    recorded["scale"]["sizes"][1]["stages"]["vmnet_train"]["peak_rss_mib"] = 2222
    assert "<td>VGGish</td>\n<td>146.01</td>\n<td>186.57</td>\n<td><strong>0.78</strong> (CPU seconds 0.81)</td>" in page
    assert "<td>VGGish, <code>--precision int8</code></td>\n<td>238.7</td>" in page
    assert "<td>speed-up, <code>int8</code></td>\n<td><strong>3.18x</strong></td>\n<td>3x</td>" in page
    assert "<td>peak RSS, <code>auto</code></td>\n<td>1,330 MiB</td>" in page
    recorded["features"]["end_to_end"]["speedup"] = 9.99
    assert "| speed-up, `auto` | **9.99x** | 3x |" in hooks.end_to_end_markdown(recorded["features"])
    del recorded["features"]["end_to_end"]["speedup_int8"]  # a CPU without int8 dot products: no int8 rows
    assert "speed-up, `int8`" not in hooks.end_to_end_markdown(recorded["features"])
    networks = (site / "feature-extraction" / "index.html").read_text()
    assert "<td>ResNet-101</td>\n<td>5.46 frames/s</td>\n<td>6.42</td>\n<td>6.23</td>" in networks
    assert "<td>0.999995, 0.999904</td>" in networks and "<td>— (bfloat16)</td>" in networks
    # bench_networks.py's first format (one prepared variant, "ours") still renders
    first = {"batch": 16, **{key: {"eager_b1": 2.35, "eager_batch": 2.7, "ours": 3.69, "speedup": 1.57,
                                   "wall_speedup": 1.94, "prepare_s": 7.3} for _, key, _ in hooks.NETWORKS}}
    assert "| ResNet-101 | 2.35 frames/s | 2.7 | 3.69 | **1.57x** (wall 1.94x) | 7.3 s |" in hooks.networks_markdown(first)
    # bench_i3d_flow.py since --precision: I3D + Farneback as before, and the speed-up over it
    recorded["i3d_flow"]["i3d"]["farneback_before"] = {"pipeline_x_realtime": 0.13, "model_only_x_realtime": 0.12,
                                                       "ratio": 1.01, "cpu_ratio": 0.98}
    recorded["i3d_flow"]["i3d"]["farneback_speedup"] = 2.54
    table = hooks.throughput_markdown(recorded)
    assert "| I3D RGB + Farneback, as before `--precision` | 0.13 | 0.12 | **1.01** (CPU seconds 0.98) |" in table
    assert "I3D + Farneback now runs **2.54x** as fast" in table
    assert "| VM-NET training, 1 epoch | 957 MiB | 2,222 MiB |" in hooks.scale_markdown(recorded["scale"])
