"""MkDocs hooks: the pages that are generated at build time, so that they cannot drift from the code.

- reference.md: every command-line script's `--help`, produced while the site builds by running each script as
  `python SCRIPT --help` (or `python -m MODULE --help`) runs it, all in one child process.
- benchmark tables (`<!-- bench:NAME -->`, NAME a key of TABLES, on any page), rendered from a bench JSON in
  bench/run.py's format: docs/bench/results.json (recorded, in git) unless $VMR_BENCH_JSON names
  another, e.g. bench/results.json after `make bench`; `<!-- bench:source -->` names the file used.
"""
import contextlib
import importlib.util
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELP_COLUMNS = "100"  # argparse wraps to the terminal's width: the page is rendered at this one

# (script path, how it is run): every argparse CLI of the project, in the order of the reference page.
COMMANDS = (
    ("feature_extraction/extract.py", "python feature_extraction/extract.py"),
    ("feature_extraction/flowProcessor.py", "python feature_extraction/flowProcessor.py"),
    ("feature_extraction/vggishProcessor.py", "python feature_extraction/vggishProcessor.py"),
    ("feature_extraction/merge.py", "python -m feature_extraction.merge"),
    ("feature_extraction/weights.py", "python feature_extraction/weights.py"),
    ("feature_extraction/downloadYt.py", "python feature_extraction/downloadYt.py"),
    ("feature_extraction/make_sample.py", "python feature_extraction/make_sample.py"),
    ("lists/himv.py", "python lists/himv.py"),
    ("vmnet/prepare.py", "python vmnet/prepare.py"),
    ("vmr/splits.py", "python -m vmr.splits"),
    ("vmnet/train.py", "python vmnet/train.py"),
    ("vmnet/test.py", "python vmnet/test.py"),
    ("vmnet/retrieve.py", "python vmnet/retrieve.py"),
    ("transformer/train.py", "python transformer/train.py"),
    ("transformer/test.py", "python transformer/test.py"),
    ("transformer/retrieve.py", "python transformer/retrieve.py"),
    ("zeroshot/retrieve.py", "python zeroshot/retrieve.py"),
    ("zeroshot/evaluate.py", "python zeroshot/evaluate.py"),
    ("vmr/report.py", "python -m vmr.report"),
    ("vmr/demo.py", "python -m vmr.demo"),
    ("vmr/synthetic.py", "python -m vmr.synthetic"),
    ("vmr/mgsv.py", "python -m vmr.mgsv"),
    ("vmnet/notebooks.py", "python -m vmnet.notebooks"),
    ("slurm/submit.py", "python slurm/submit.py"),
    ("slurm/records.py", "python slurm/records.py"),
    ("bench/run.py", "python bench/run.py"),
    ("bench/bench_features.py", "python bench/bench_features.py"),
    ("bench/bench_networks.py", "python bench/bench_networks.py"),
    ("bench/bench_i3d_flow.py", "python bench/bench_i3d_flow.py"),
    ("bench/bench_models.py", "python bench/bench_models.py"),
    ("bench/bench_vmnet.py", "python bench/bench_vmnet.py"),
    ("bench/bench_segments.py", "python bench/bench_segments.py"),
    ("bench/bench_scale.py", "python bench/bench_scale.py"),
    ("bench/bench_moments.py", "python bench/bench_moments.py"),
    ("bench/gpu.py", "python bench/gpu.py"),
)


def help_argv(command):
    """The argv that runs `command` (as written in COMMANDS) with --help under this Python."""
    return [sys.executable, *command.split()[1:], "--help"]


def help_in_this_process(command):
    """What `command --help` prints, run here as Python would run it: the script as __main__ with its own
    folder first on sys.path, or `-m` a module. One process for all scripts imports torch once."""
    words = command.split()[1:]
    out, argv, path = io.StringIO(), sys.argv[:], sys.path[:]
    try:
        with contextlib.redirect_stdout(out):
            if words[0] == "-m":
                sys.argv = [words[1], "--help"]
                runpy.run_module(words[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [words[0], "--help"]
                sys.path.insert(0, str((REPO / words[0]).parent))
                runpy.run_path(str(REPO / words[0]), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise RuntimeError(f"{command} --help: exit status {stop.code}") from None
    finally:
        sys.argv, sys.path[:] = argv, path
    return out.getvalue()


def all_help_texts():
    """{path: --help text} for every script of COMMANDS, from one child process (this file run as a script)."""
    env = dict(os.environ, COLUMNS=HELP_COLUMNS)
    result = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"docs/hooks.py: the --help texts: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def reference_markdown(texts):
    parts = []
    for path, command in COMMANDS:
        parts.append(f"## `{path}`\n\nRun as `{command}`.\n\n```text\n{texts[path].rstrip()}\n```\n")
    return "\n".join(parts)


def bench_models():
    spec = importlib.util.spec_from_file_location("bench_models", REPO / "bench" / "bench_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The rows of bench_models.py's first format (one run per regime, a "table" of both directions), which the recorded
# run of 2026-11-30 in docs/bench/results.json has: the Transformer under each scoring.
REGIME_ROWS = (("chance", "chance"), ("tuned CCA", "cca"), ("aligned linear", "aligned_linear"), ("VM-NET", "vmnet"),
               ("Transformer pooled", "pooled"), ("Transformer aligned", "aligned"))


def models_markdown(result):
    """The tables of bench/bench_models.py's result, in either of its formats: per setting (regime:family over
    seeds: mean ± std and the paired bootstrap intervals), or the first format's per regime."""
    lines = []
    for name, r in result.items():
        if isinstance(r, dict) and "summary" in r:
            lines += setting_markdown(name, r, bench_models().ROWS)
        elif isinstance(r, dict) and "table" in r:
            lines += regime_markdown(name, r)
    if "mgsv_estimate" in result:
        lines += mgsv_markdown(result["mgsv_estimate"])
    return "\n".join(lines)


def mgsv_markdown(r):
    """bench_models.py's MGSV-EC estimate: measured per-item times on MGSV-EC-shaped data, scaled to MGSV-EC."""
    lines = [f"**MGSV-EC estimate** (measured on {r['videos']} generated videos of MGSV-EC's shapes, {r['test_queries']} "
             "test queries; scaled to 49,194 training videos and a test of 2,000 queries against 2,000 tracks)", ""]
    for model in ("vmnet", "transformer"):
        if model in r:
            m = r[model]
            lines.append(f"- {model}: one epoch on MGSV-EC about {m['mgsv_epoch_hours']:g} h "
                         f"({m['seconds_per_training_video_epoch']:g} s per training video), its test about "
                         f"{m['mgsv_test_hours']:g} h ({m['test_seconds_per_pair']:g} s per query-track pair)")
    lines.append("")
    return lines


def setting_markdown(name, r, rows):
    """One setting of the current format: each row's mean ± std over seeds, the comparisons, the training cost."""
    table = r["summary"]["table"]
    metrics = [m for m in ("R@1", "R@10", "mIoU", "MoR@1 IoU>0.7") if m in table["chance"]]
    lines = [f"**{name}** ({r['queries']} test queries, {r['tracks']} tracks, seeds {', '.join(map(str, r['seeds']))}; "
             "mean ± std over seeds, video → music)", "",
             "| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, key in rows:
        if key in table:
            lines.append(f"| {label} | " + " | ".join(f"{table[key][m]['mean']:.3f} ± {table[key][m]['std']:.3f}"
                                                    for m in metrics) + " |")
    lines.append("")
    for comparison, c in r["summary"]["comparisons"].items():
        verdict = "gain" if c["gain"] else "loss" if c["loss"] else "no difference shown"
        lines.append(f"- {comparison}: {c['difference']:+.4f}, 95% interval [{c['interval95'][0]:.4f}, "
                     f"{c['interval95'][1]:.4f}]: {verdict}")
    for model in ("vmnet", "transformer"):
        runs = [run["training"][model] for run in r.get("runs", []) if model in run.get("training", {})]
        if runs:
            lines.append(f"- {model} training, per seed: " + "; ".join(
                f"{t['train_seconds']} s wall, {t['epochs']} epochs, {t['seconds_per_epoch']} s/epoch, peak RSS "
                f"{t['peak_rss_mib']} MiB" for t in runs))
    lines.append("")
    return lines


def regime_markdown(regime, r):
    """One regime of the first format: R@1, R@10 and MedR of every model and baseline, both directions."""
    directions = ("video_to_music", "music_to_video")
    settings = "; ".join(f"{name} ridge {s['ridge']:g}, d {s['dims']}" for name, s in
                         (("CCA", r["baseline_settings"]["cca"]), ("aligned linear", r["baseline_settings"]["aligned_linear"])))
    lines = [f"**{regime}** ({r['pairs']} pairs, whole test gallery of {r['test_gallery']}; baselines: {settings})", "",
             "| | v→m R@1 | v→m R@10 | v→m MedR | m→v R@1 | m→v R@10 | m→v MedR |", "|---|---|---|---|---|---|---|"]
    for name, key in REGIME_ROWS:
        if key in r["table"]:
            cells = [f"{r['table'][key][d][k]:.3f}" if k != "MedR" else f"{r['table'][key][d][k]:g}"
                     for d in directions for k in ("R@1", "R@10", "MedR")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ablation = r.get("ablation_no_flow_losses")
    if ablation:
        text = " / ".join(f"{s} R@1 {a['R@1']:.3f} R@10 {a['R@10']:.3f}" for s, a in sorted(ablation.items()))
        lines.append(f"| Transformer without flow-rank losses | {text} | | | | | |")
    lines.append("")
    for name, t in r["training"].items():
        lines.append(f"- {name}: {t['train_seconds']} s wall, {t['epochs']} epochs, {t['seconds_per_epoch']} s/epoch, "
                     f"peak RSS {t['peak_rss_mib']} MiB")
    lines.append("")
    return lines


SCALE_STAGES = {"prepare": "prepare (`--split_format mmap`)", "vmnet_train": "VM-NET training, 1 epoch",
                "transformer_train": "Transformer training, 1 epoch (linear start, validation)",
                "vmnet_test": "VM-NET test (baselines fitted on the training split)",
                "transformer_test": "Transformer test (the same baselines)"}


def scale_markdown(result):
    """bench/bench_scale.py's peak RSS per stage at its smallest and largest size, and their ratio."""
    small, large = result["sizes"][0], result["sizes"][-1]
    lines = [f"| stage | peak RSS, {small['items']:,} items | {large['items']:,} items | ratio (goal <= 1.3) | "
             f"wall s ({small['items']:,} / {large['items']:,}) |", "|---|---|---|---|---|"]
    for name, s in small["stages"].items():
        if name in large["stages"]:
            t = large["stages"][name]
            lines.append(f"| {SCALE_STAGES.get(name, name)} | {s['peak_rss_mib']:,} MiB | {t['peak_rss_mib']:,} MiB | "
                         f"**{result['rss_ratio_largest_to_smallest'][name]:.2f}** | "
                         f"{s['wall_seconds']:g} / {t['wall_seconds']:g} |")
    return "\n".join(lines) + "\n"


THROUGHPUT_ROWS = (("ResNet-101", "features", "throughput", "resnet"), ("CLIP ViT-B/32", "features", "throughput", "clip"),
                   ("VGGish", "features", "throughput", "vggish"),
                   ("ResNet-101, `--precision int8`", "features", "throughput_int8", "resnet"),
                   ("VGGish, `--precision int8`", "features", "throughput_int8", "vggish"),
                   ("I3D RGB + Farneback flow (4 s clip)", "i3d_flow", "i3d", "farneback"),
                   ("I3D RGB + Farneback, as before `--precision`", "i3d_flow", "i3d", "farneback_before"),
                   ("I3D RGB + TV-L1 flow (4 s clip)", "i3d_flow", "i3d", "tvl1"),
                   ("I3D RGB + RAFT flow (1 s clip)", "i3d_flow", "i3d", "raft"),
                   ("flowProcessor (Farneback trajectory, segments, ranks)", "i3d_flow", "flowProcessor"),
                   ("avpeaks", "i3d_flow", "avpeaks"))


def throughput_markdown(result):
    """Pipeline and model-only speed per feature (bench_features.py and bench_i3d_flow.py), and their ratio."""
    lines = ["| feature | pipeline, x real time | model only | ratio (goal >= 0.9) |", "|---|---|---|---|"]
    for label, *keys in THROUGHPUT_ROWS:
        row = result
        for key in keys:
            row = row.get(key, {}) if isinstance(row, dict) else {}
        if "ratio" in row:
            cpu = f" (CPU seconds {row['cpu_ratio']:.2f})" if "cpu_ratio" in row else ""
            lines.append(f"| {label} | {row['pipeline_x_realtime']:g} | {row['model_only_x_realtime']:g} | "
                         f"**{row['ratio']:.2f}**{cpu} |")
    speedup = result.get("i3d_flow", {}).get("i3d", {}).get("farneback_speedup")
    if speedup is not None:
        lines += ["", f"I3D + Farneback now runs **{speedup:.2f}x** as fast as before `--precision` reached the CPU "
                  "(pipeline speed, same run; goal 1.5x)."]
    return "\n".join(lines) + "\n"


NETWORKS = (("ResNet-101", "resnet101", "frames/s"), ("CLIP ViT-B/32", "clip_vit_b32", "frames/s"),
            ("VGGish", "vggish", "examples/s"))


def networks_markdown(result):
    """bench_networks.py's items per CPU second, in either of its formats: per precision against eager float32 at
    batch 1 and the frozen graph shipped before (since --precision), or the first format's one prepared variant."""
    batch = result["batch"]
    if "bfloat16" not in result[NETWORKS[0][1]]:
        lines = [f"| network | eager float32, batch 1 | eager, batch {batch} | ours, batch {batch} | speed-up | prepare |",
                 "|---|---|---|---|---|---|"]
        for label, key, unit in NETWORKS:
            r = result[key]
            lines.append(f"| {label} | {r['eager_b1']:g} {unit} | {r['eager_batch']:g} | {r['ours']:g} | "
                         f"**{r['speedup']:.2f}x** (wall {r['wall_speedup']:.2f}x) | {r['prepare_s']:g} s |")
        return "\n".join(lines) + "\n"
    lines = ["| network | eager float32, batch 1 | frozen float32 (shipped before) | float32 now | **bfloat16** | "
             "**int8** (`--precision int8`) | torch.ao int8: dynamic, static | bfloat16 / frozen | min cosine: "
             "bfloat16, int8 | prepare: float32, bfloat16, int8 (calibrating) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, key, unit in NETWORKS:
        r = result[key]
        ours = (f"**{r['int8']:g}** ({r['int8_over_bfloat16']:.2f}x bfloat16)" if "int8" in r else "— (bfloat16)")
        dynamic = f"{r['int8_dynamic']:g}" if "int8_dynamic" in r else "—"
        static = (f"{r['int8_static']:g} (cosine {r['int8_static_cosine_min']:g})" if "int8_static" in r else "—")
        cosines = f"{r['bfloat16_cosine_min']:g}" + (f", {r['int8_cosine_min']:g}" if "int8" in r else "")
        prepare = f"{r['float32_prepare_s']:g} s, {r['bfloat16_prepare_s']:g} s" + (
            f", {r['int8_prepare_s']:g} s ({r['int8_calibrate_s']:g} s)" if "int8" in r else "")
        lines.append(f"| {label} | {r['eager_b1']:g} {unit} | {r['frozen_float32']:g} | {r['float32']:g} | "
                     f"**{r['bfloat16']:g}** ({r['speedup_bfloat16']:.2f}x eager) | {ours} | {dynamic}, {static} | "
                     f"**{r['bfloat16_over_frozen']:.2f}x** | {cosines} | {prepare} |")
    return "\n".join(lines) + "\n"


def end_to_end_markdown(result):
    """bench_features.py's one extract.py pass of resnet clip vggish against three eager float32 processes."""
    e, runs = result["end_to_end"], result["extract_py"]
    eager = ", ".join(f"{k} {v:g}" for k, v in e["eager_processes_wall_s"].items())
    lines = ["| measure | result | goal |", "|---|---|---|",
             f"| three eager float32 processes (video_features' way), wall | {e['eager_total_wall_s']:g} s ({eager}) | |",
             f"| one pass, `--precision auto`, wall (before and after the three) | "
             f"{' and '.join(f'{w:g} s' for w in e['one_pass_wall_s'])} | |",
             f"| speed-up, `auto` | **{e['speedup']:.2f}x** | {e['goal']:g}x |"]
    if "speedup_int8" in e:
        lines += [f"| one pass, `--precision int8`, wall (before and after) | "
                  f"{' and '.join(f'{w:g} s' for w in e['one_pass_int8_wall_s'])} | |",
                  f"| speed-up, `int8` | **{e['speedup_int8']:.2f}x** | {e['goal']:g}x |"]
    short, long = runs["short"], runs["long"]
    lines += [f"| peak RSS, `auto` | {short['peak_rss_mib']:,.0f} MiB | 2.2 GB |",
              f"| start-up, model loading (`auto`) | {short['startup_s']:g} s, {short['model_loading_s']:g} s | |",
              f"| rerun with nothing to do | {runs['short_nothing_to_do']['wall_s']:g} s, "
              f"{runs['short_nothing_to_do']['peak_rss_mib']:,.0f} MiB | |",
              f"| 10x longer clip, peak RSS | {long['peak_rss_mib']:,.0f} MiB (ratio {runs['rss_ratio_long_to_short']:.2f}) | "
              "flat |"]
    if "short_int8" in runs:
        lines.append(f"| peak RSS, `int8` | {runs['short_int8']['peak_rss_mib']:,.0f} MiB | 2.2 GB |")
    return "\n".join(lines) + "\n"


# <!-- bench:NAME --> -> the markdown of its table, from the whole bench JSON
TABLES = {"models": (lambda r: models_markdown(r["models"])), "scale": (lambda r: scale_markdown(r["scale"])),
          "index": (lambda r: index_markdown(r["scale"]["index"])), "throughput": throughput_markdown,
          "networks": (lambda r: networks_markdown(r["networks"])),
          "end_to_end": (lambda r: end_to_end_markdown(r["features"]))}


INDEXES = (("VM-NET tracks", "vmnet_tracks"), ("Transformer tracks", "transformer_tracks"),
           ("Transformer segments", "transformer_segments"))


def faiss_cell(entry, knob):
    if "skipped" in entry:
        return "not built (over `BENCH_SCALE_HNSW_MAX`)"
    best = entry["fastest_at_recall_0.95"]
    if best is None:
        return f"recall@10 below 0.95 at every {knob}, build {entry['build_seconds']:g} s"
    return (f"{knob} {best[knob]}: recall@10 {best['recall@10']:.3f}, {best['speedup_vs_exact']:g}x, "
            f"build {entry['build_seconds']:g} s")


def index_markdown(result):
    """bench_scale.py's index part: exact search against the bandwidth bound, and the fastest FAISS setting with
    recall@10 >= 0.95 per index."""
    lines = ["| index | bytes | bandwidth bound (same run) | exact top-10, one query | exact / bound (goal <= 1.5) | "
             "IVF-Flat | HNSW (M 32) |", "|---|---|---|---|---|---|---|"]
    for label, key in INDEXES:
        r = result[key]
        lines.append(f"| {label}, {r['rows']:,} x {r['dim']} | {r['bytes'] / 1e6:.0f} MB | {r['bound_ms']:g} ms "
                     f"({r['bandwidth_gb_per_s']:g} GB/s) | {r['exact_ms']:g} ms | **{r['exact_over_bound']:.2f}** | "
                     f"{faiss_cell(r['faiss']['ivf'], 'nprobe')} | {faiss_cell(r['faiss']['hnsw'], 'efSearch')} |")
    return "\n".join(lines) + "\n"


def bench_json_path():
    return Path(os.environ.get("VMR_BENCH_JSON") or REPO / "docs" / "bench" / "results.json")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "reference.md":
        return markdown.replace("<!-- commands -->", reference_markdown(all_help_texts()))
    if "<!-- bench:" in markdown:
        path = bench_json_path()
        result = json.loads(path.read_text())
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        markdown = markdown.replace("<!-- bench:source -->", f"`{shown}`")
        for name, render in TABLES.items():
            if f"<!-- bench:{name} -->" in markdown:
                markdown = markdown.replace(f"<!-- bench:{name} -->", render(result))
    return markdown


if __name__ == "__main__":  # the child of all_help_texts(): prints {path: --help text} as JSON
    print(json.dumps({path: help_in_this_process(command) for path, command in COMMANDS}))
