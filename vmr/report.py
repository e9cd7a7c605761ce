"""One self-contained HTML page of results: metrics tables, recall and training curves, example queries.

Each `--run NAME=DIR` is a folder written by vmnet/test.py or transformer/test.py (metrics.json,
retrieval.json) beside its trainer's train_log.csv. Every image is an inlined base64 PNG, and the
page names no external URL, so it opens the same offline, from an e-mail or from a CI artifact.
"""
import argparse
import base64
import csv
import html
import io
import json
import re
import sys
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

KS_ORDER = ("R@1", "R@5", "R@10", "R@20", "R@25", "R@50", "R@100")
DIRECTIONS = (("video_to_music", "video → music"), ("music_to_video", "music → video"))
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.id { text-align: left; }
tr.baseline td { color: #666; font-style: italic; }
tr.gt td { font-weight: bold; background: #e6f4e6; }
.query { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap;
         border-top: 1px solid #ccc; padding-top: 1em; margin-top: 1em; }
.note { color: #a00; }
.warning { color: #fff; background: #b00; padding: 0.5em; font-weight: bold; }
img { max-width: 100%; }
"""


class RunError(Exception):
    """A --run folder that cannot be read (reported as `DIR: reason`)."""


def load_run(name, run_dir):
    """{name, dir, metrics, retrieval, log} of one run folder; train_log.csv may be absent."""
    run_dir = Path(run_dir)
    run = {"name": name, "dir": run_dir, "log": None}
    for key, file in (("metrics", "metrics.json"), ("retrieval", "retrieval.json")):
        path = run_dir / file
        if not path.is_file():
            raise RunError(f"{run_dir}: no {file}")
        try:
            run[key] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise RunError(f"{path}: not JSON ({e})") from None
    log = run_dir / "train_log.csv"
    if log.is_file():
        with open(log, newline="", encoding="utf-8") as f:
            run["log"] = list(csv.DictReader(f))
    return run


def png_data_uri(fig_or_image):
    """A matplotlib Figure or PIL image as a base64 PNG data URI."""
    buf = io.BytesIO()
    if isinstance(fig_or_image, Figure):
        fig_or_image.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    else:
        fig_or_image.save(buf, format="png")
    text = base64.b64encode(buf.getvalue()).decode("ascii")
    # Base64 text can spell "http" by chance; a newline inside it is ignored by the data-URL
    # decoder, so the page provably names no URL scheme.
    text = re.sub(r"(?i)(ht)(tp)", "\\1\n\\2", text)
    return "data:image/png;base64," + text


def img(uri, alt, width=None):
    size = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{size}>'


def directions(block):
    """A baseline block as {direction: recall block}: per-direction dicts, or one shared block."""
    if not block:
        return {}
    if any(d in block for d, _ in DIRECTIONS):
        return {d: block[d] for d, _ in DIRECTIONS if block.get(d)}
    return {d: block for d, _ in DIRECTIONS}


def k_columns(runs):
    keys = set()
    for run in runs:
        for d, _ in DIRECTIONS:
            keys.update(k for k in (run["metrics"].get(d) or {}) if k.startswith("R@"))
    return [k for k in KS_ORDER if k in keys] + sorted(keys - set(KS_ORDER), key=lambda k: int(k[2:]))


def fmt(value, recall):
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if recall else f"{value:.1f}"


def metric_row(label, block, ks, css=""):
    cells = [fmt(block.get(k), True) for k in ks] + [fmt(block.get("MedR"), False), fmt(block.get("MeanR"), False)]
    cls = f' class="{css}"' if css else ""
    return f"<tr{cls}><td>{html.escape(label)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def run_label(run):
    """The run's name, with the model's name when the two differ."""
    model = run["metrics"].get("model", "?")
    return run["name"] if model == run["name"] else f'{run["name"]} ({model})'


BASELINES = (("cca", "tuned CCA (mean-pooled)"), ("aligned_linear", "aligned linear (per second)"),
             ("zeroshot", "zero-shot Wav2CLIP"))


def banner(runs):
    """A warning box for every run whose features came from random (test) weights."""
    from vmr.evaluation import provenance_banner

    notes = [f'{html.escape(r["name"])}: {html.escape(provenance_banner(r["metrics"].get("provenance")))}'
             for r in runs if provenance_banner(r["metrics"].get("provenance"))]
    return "".join(f'<p class="warning">WARNING, {n}</p>' for n in notes)


def metrics_table(runs):
    """One table: for each run and direction the model's row, then its baselines and chance on the same gallery."""
    ks = k_columns(runs)
    head = "".join(f"<th>{k} (%)</th>" for k in ks)
    rows = []
    for run in runs:
        m = run["metrics"]
        baselines = m.get("baselines") or {}
        chance = directions(baselines.get("chance"))
        headline = f', {m["scoring"]} scoring' if m.get("scoring") else ""
        for d, arrow in DIRECTIONS:
            if not m.get(d):
                continue
            model = f'{run_label(run)}{headline}, N = {m.get("gallery", "?")}, {arrow}'
            rows.append(metric_row(model, m[d], ks))
            for scoring, block in (m.get("scorings") or {}).items():  # the Transformer's other track score
                if scoring != m.get("scoring") and (block or {}).get(d):
                    rows.append(metric_row(f'{run["name"]}, {scoring} scoring, {arrow}', block[d], ks))
            for key, name in BASELINES:
                block = directions(baselines.get(key))
                if d in block:
                    rows.append(metric_row(f"  {name}, {arrow}", block[d], ks, "baseline"))
            if d in chance:
                rows.append(metric_row(f"  chance, {arrow}", chance[d], ks, "baseline"))
    return (
        '<table id="metrics"><thead><tr><th>model, gallery, direction</th>'
        + head
        + "<th>MedR</th><th>MeanR</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


LIBRARY = (("R@1", "R@1 (%)"), ("R@5", "R@5 (%)"), ("R@10", "R@10 (%)"), ("mIoU", "mIoU"), ("MoR@1 IoU>0.7", "MoR@1 (%)"),
           ("MoR@10 IoU>0.7", "MoR@10 (%)"), ("MoR@100 IoU>0.7", "MoR@100 (%)"), ("MoR@10 IoU>0.7 retrieved", "MoR@10 retrieved (%)"))


def library_table(runs, published=()):
    """MGSV-EC's metrics (tracks and moments) of every run, its baselines and chance; then published rows
    ({"name", "source", metric keys: fractions}) beside them."""
    def row(label, block, css=""):
        cells = [("–" if block.get(k) is None else f"{block[k]:.3f}" if k == "mIoU" else f"{100 * block[k]:.1f}") for k, _ in LIBRARY]
        cls = f' class="{css}"' if css else ""
        return f"<tr{cls}><td>{html.escape(label)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    rows = []
    for run in runs:
        m = run["metrics"]
        if not m.get("library"):
            continue
        baselines = m.get("baselines") or {}
        rows.append(row(f'{run_label(run)}, {m.get("gallery")} tracks, {m.get("queries")} queries', m["library"]))
        rows += [row(f"  {name}", baselines[key]["library"], "baseline") for key, name in BASELINES
                 if (baselines.get(key) or {}).get("library")]
        if baselines.get("library_chance"):
            rows.append(row("  chance", baselines["library_chance"], "baseline"))
    rows += [row(f'{p["name"]} (published: {p["source"]})', p, "baseline") for p in published]
    if not rows:
        return ""
    return ("<h3>Library retrieval: the track and the moment (MGSV-EC metrics)</h3><p>R@K over unique tracks; mIoU of the "
            "moment found on the true track; MoR@K: the true track within the first K and its moment at IoU &gt; 0.7 "
            "(on the true track, as the official code; <i>retrieved</i>: the moment attached to that answer).</p>"
            '<table id="library"><thead><tr><th>model</th>' + "".join(f"<th>{label}</th>" for _, label in LIBRARY)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def flat_items(prefix, value):
    """Nested dict -> [(dotted key, number)] for the FAD / AV-Align table."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in flat_items(f"{prefix}.{k}" if prefix else k, v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(prefix, value)]
    return []


def extras_table(runs):
    """FAD, AV-Align and the batch-level block, when a run has them."""
    rows = []
    for run in runs:
        m = run["metrics"]
        for key in ("fad", "av_align"):
            for name, value in flat_items(key, m.get(key)):
                shown = f"{value:.4f}".replace("-0.0000", "0.0000") if isinstance(value, float) else str(value)
                rows.append(f'<tr><td>{html.escape(run["name"])}</td><td class="id">{html.escape(name)}</td><td>{shown}</td></tr>')
    if not rows:
        return ""
    return (
        "<h3>FAD and AV-Align</h3><table><thead><tr><th>run</th><th>metric</th><th>value</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def recall_curves(runs):
    """Recall@K against K, video → music, every model with its chance and CCA lines."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for run in runs:
        m = run["metrics"]
        block = m.get("video_to_music") or {}
        ks = [k for k in k_columns([run]) if k in block]
        xs = [int(k[2:]) for k in ks]
        line = ax.plot(xs, [block[k] for k in ks], marker="o", label=run_label(run))[0]
        baselines = m.get("baselines") or {}
        for name, style in (("chance", ":"), ("cca", "--"), ("aligned_linear", "-.")):
            base = directions(baselines.get(name)).get("video_to_music")
            if base:
                bks = [k for k in ks if k in base]
                ax.plot([int(k[2:]) for k in bks], [base[k] for k in bks], style, color=line.get_color(),
                        label=f'{run["name"]} {dict(BASELINES).get(name, name)}')
    ax.set_xscale("log")
    ks = sorted({int(k[2:]) for k in k_columns(runs)})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (video → music)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def number(row, key):
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return None


def lr_runs(rows):
    """A training log's rows split into its learning-rate runs: [(label, rows)] in order.

    VM-NET trains one model per --lr in turn and restarts its epochs for each (column lr_index), so its
    runs drawn as one line would join into a zig-zag. Each run is labelled with the learning rate of its
    first epoch ("lr 0.001"); a log without lr_index (the Transformer's) is one run, labelled None."""
    runs = []
    for row in rows:
        index = row.get("lr_index")
        if runs and str(index) == str(runs[-1][0]):
            runs[-1][1].append(row)
        else:
            runs.append((index, [row]))
    labelled = []
    for index, part in runs:
        lr = number(part[0], "lr")
        labelled.append((None if index in (None, "") else f"lr {lr:g}" if lr is not None else f"lr_index {index}", part))
    return labelled


def plot_training_log(loss_ax, recall_ax, rows, name=None):
    """A training log's loss (on loss_ax) and validation R@1 (solid) / R@10 (dashed, on recall_ax) per epoch:
    one line per learning-rate run (lr_runs), labelled NAME and its learning rate. Also draws
    vmnet/train.py's train_log.png."""
    for lr_label, part in lr_runs(rows):
        label = " ".join(filter(None, (name, lr_label))) or None
        epochs = [number(r, "epoch") for r in part]
        line = loss_ax.plot(epochs, [number(r, "train_loss") for r in part], marker=".", label=label)[0]
        for key, style in (("val_R@1", "-"), ("val_R@10", "--")):
            values = [number(r, key) for r in part]
            if any(v is not None for v in values):
                recall_ax.plot(epochs, values, style, marker=".", color=line.get_color(),
                               label=" ".join(filter(None, (label, key))))


def training_curves(runs):
    """The figure of training loss and validation R@1 / R@10 per epoch, one line per run and learning rate;
    None without logs."""
    logged = [run for run in runs if run["log"]]
    if not logged:
        return None
    fig = Figure(figsize=(10, 3.5))
    loss_ax, recall_ax = fig.subplots(1, 2)
    for run in logged:
        plot_training_log(loss_ax, recall_ax, run["log"], run["name"])
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    recall_ax.set(xlabel="epoch", ylabel="recall", title="validation recall", ylim=(0, 1.02))
    for ax in (loss_ax, recall_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def find_video(videos_dir, vid):
    if videos_dir is None:
        return None
    for suffix in VIDEO_SUFFIXES:
        path = Path(videos_dir) / f"{vid}{suffix}"
        if path.is_file():
            return path
    matches = sorted(p for p in Path(videos_dir).glob(f"{glob_escape(vid)}.*") if p.is_file())
    return matches[0] if matches else None


def glob_escape(text):
    return re.sub(r"([*?\[])", r"[\1]", text)


def middle_frame(path, max_side=320):
    """The decoded frame at the middle of the video as a PIL image (seek, then decode forward)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = max((f.time for f in container.decode(stream)), default=0.0)
            container.seek(0)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        middle = start + duration / 2
        container.seek(int(middle / stream.time_base), stream=stream, backward=True)
        frame = None
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= middle:
                break
        if frame is None:
            raise ValueError("no decodable frame")
        image = frame.to_image()
    image.thumbnail((max_side, max_side))
    return image


def top_table(query):
    rows = []
    for i, hit in enumerate(query.get("top", []), 1):
        css = ' class="gt"' if hit.get("id") == query.get("gt") else ""
        rows.append(
            f'<tr{css}><td>{i}</td><td class="id">{html.escape(str(hit.get("id")))}</td>'
            f'<td>{hit.get("score", float("nan")):.3f}</td></tr>'
        )
    return "<table><thead><tr><th>#</th><th>track</th><th>score</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def segment_timeline_figure(query):
    """Figure: each query segment as a bar over the video's seconds, labelled with its best track segment.

    `query` is one entry of retrieval.json with "segments" (also used by notebooks/Transformer.ipynb).
    """
    segments = query["segments"]
    tracks = sorted({s["track"] for s in segments})
    colours = {t: matplotlib.colormaps["tab10"](i % 10) for i, t in enumerate(tracks)}
    fig = Figure(figsize=(9, 1.6))
    ax = fig.subplots()
    for s in segments:
        ax.broken_barh([(s["start"], s["end"] - s["start"])], (0, 1), facecolors=colours[s["track"]], edgecolor="black")
        label = f'{s["track"]}\n{s["track_start"]}–{s["track_end"]} s\n{s["score"]:.2f}'
        ax.text((s["start"] + s["end"]) / 2, 0.5, label, ha="center", va="center", fontsize=8)
    ax.set_xlim(0, max(s["end"] for s in segments))
    ax.set_yticks([])
    ax.set_xlabel(f'seconds of query {query["id"]} (bar: segment; text: matched track, its seconds, cosine)')
    return fig


def query_sections(runs, videos_dir, n_queries):
    """The first n query ids of the first run that has queries, shown for every run that answered them."""
    ids = []
    for run in runs:
        for q in run["retrieval"].get("queries", []):
            if q["id"] not in ids:
                ids.append(q["id"])
    sections = []
    for vid in ids[:n_queries]:
        parts = [f'<h3>query {html.escape(vid)}</h3><div class="query">']
        video = find_video(videos_dir, vid)
        try:
            if video is None:
                raise FileNotFoundError(f"no video named {vid}.* in {videos_dir}")
            parts.append(f"<div>{img(png_data_uri(middle_frame(video)), f'middle frame of {vid}')}"
                         f"<br>middle frame of {html.escape(video.name)}</div>")
        except Exception as e:  # a report shows what it can; the frame is an illustration
            print(f"{video or vid}: {e}", file=sys.stderr)
            parts.append(f'<div class="note">no frame: {html.escape(str(e))}</div>')
        for run in runs:
            query = next((q for q in run["retrieval"].get("queries", []) if q["id"] == vid), None)
            if query is None:
                continue
            parts.append(f'<div><b>{html.escape(run["name"])}</b> (ground truth: {html.escape(str(query.get("gt")))})'
                         f"{top_table(query)}</div>")
            if query.get("segments"):
                parts.append(f"<div>{img(png_data_uri(segment_timeline_figure(query)), f'segment matches of {vid}')}</div>")
        parts.append("</div>")
        sections.append("".join(parts))
    return "".join(sections)


def render(runs, videos_dir=None, n_queries=3, title="VMR results", published=()):
    """The whole page as one string; `published`: rows of other work to show beside the library metrics."""
    sources = "".join(
        f'<li><b>{html.escape(r["name"])}</b>: {html.escape(str(r["dir"]))} '
        f'(checkpoint {html.escape(str(r["metrics"].get("checkpoint", "?")))}, '
        f'features {html.escape(json.dumps(r["metrics"].get("features", {})))})</li>'
        for r in runs
    )
    train = training_curves(runs)
    body = [
        f"<h1>{html.escape(title)}</h1>{banner(runs)}<ul>{sources}</ul>",
        "<h2>Whole-gallery retrieval</h2>" + banner(runs) +
        "<p>Recall in %, ranks 1-based with ties counted against the model; the baselines (fitted on the training ids, "
        "tuned on the validation ids) and chance on the same test gallery; every track cut from its own music "
        "(README, Protocol).</p>",
        metrics_table(runs),
        library_table(runs, published),
        extras_table(runs),
        "<h2>Recall@K</h2>" + banner(runs),
        img(recall_curves(runs), "recall at K curves"),
        "<h2>Training</h2>",
        img(png_data_uri(train), "training curves") if train else "<p>No train_log.csv in these runs.</p>",
        "<h2>Example queries</h2>" + banner(runs),
        query_sections(runs, videos_dir, n_queries),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{STYLE}</style></head><body>'
        + "".join(body)
        + "</body></html>\n"
    )


def parse_run(text):
    name, sep, run_dir = text.partition("=")
    if not sep or not name or not run_dir:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, run_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=parse_run, action="append", required=True, metavar="NAME=DIR",
                        help="a model's evaluation folder (metrics.json, retrieval.json, train_log.csv); repeatable")
    parser.add_argument("--videos", default=None,
                        help="folder of the query videos, for the middle frame of each example query (<id>.<ext>)")
    parser.add_argument("--out", default="report.html", help="the HTML page to write (default: report.html)")
    parser.add_argument("--queries", type=int, default=3, help="how many example queries to show (default: 3)")
    parser.add_argument("--title", default="VMR results", help="page title")
    parser.add_argument("--published", help="JSON list of published rows to show beside the library metrics: {name, source, "
                                            "R@1, R@5, R@10, mIoU, MoR@1 IoU>0.7, ...} as fractions (vmr.mgsv writes MaDe's)")
    args = parser.parse_args(argv)

    from feature_extraction.atomic import write_text

    runs, failed = [], 0
    for name, run_dir in args.run:
        try:
            runs.append(load_run(name, run_dir))
        except RunError as e:
            print(e, file=sys.stderr)
            failed += 1
    if runs:
        published = json.loads(Path(args.published).read_text(encoding="utf-8")) if args.published else ()
        write_text(args.out, render(runs, args.videos, args.queries, args.title, published))
        print(f"wrote {args.out}")
    if failed:
        print(f"{failed} failed", file=sys.stderr)
    return 1 if failed or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
