"""The evaluation protocol both models' test.py follow (README "Protocol"), step by step.

1. The gallery is the test tracks, each whole, as in a user's library; every query video (whole) is ranked
   against all of them by the model's scorer (vmr.scorer): the very ranking retrieve.py gives for a library of
   the same tracks. Both directions; ties against the model (vmr.metrics.gt_ranks); non-finite scores stop it.
2. Test ids seen in training or validation (the checkpoint lists them) are an error, and so are test
   features whose provenance (_feature.json) differs from the checkpoint's.
3. Baselines on the same gallery, through the same ranking code: chance (counting groups); ridge CCA on
   mean-pooled features and the time-aligned linear model, both fitted on the checkpoint's training ids and
   tuned on its validation ids; the zero-shot Wav2CLIP row when clip and wav2clip rows exist.
4. FAD against a real chance level; AV-Align with the video's duration.

`main` is the whole test.py command line of both models (each passes its scorer).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from feature_extraction.atomic import write_json
from vmr import metrics as M
from vmr.baselines import BaselineScorer, tuned_aligned_linear, tuned_cca
from vmr import moments as moments_metrics
from vmr.data import (Gallery, check_dims, check_overlap, feature_names, load_gallery, load_sequences, read_groups, read_ids,
                      read_rows)
from vmr.runs import check_provenance, random_weight_kinds
from vmr.scorer import answers, embed_library, embed_query_set, moments, score_rows, shown
from vmr.zeroshot import DIM, ROWS, ZeroShotScorer

TOP = 5  # answers per query in retrieval.json
ANSWERS = 10  # answers per query with their moments: the "retrieved" reading of MoR@K for K <= 10


def check_test_split(ckpt, test_data_dir, test_ids, what):
    """Step 2 of the protocol: no training or validation id in the test ids; the same feature provenance."""
    check_overlap(list(ckpt.get("train_ids", [])) + list(ckpt.get("val_ids", [])), test_ids)
    return check_provenance(ckpt.get("provenance"), test_data_dir, what)


def score_blocks(v2m, gt, groups, what, with_ranks=True):
    """Both directions from a (queries, tracks) score matrix: video -> music ranks each row's tracks (truth: track
    gt[i], or any track of its group), music -> video each track's videos (truth: the videos showing it)."""
    n, n_tracks = v2m.shape
    labels = np.asarray(groups) if groups is not None else np.arange(n_tracks)
    shows = labels[np.asarray(gt)][None, :] == labels[:, None]  # (tracks, videos)
    try:  # gt and groups, not an (n, N) relevance matrix: gt_ranks builds it a chunk of rows at a time
        return {"video_to_music": M.recall_block(M.gt_ranks(v2m, groups=groups, gt=gt), with_ranks=with_ranks),
                "music_to_video": M.recall_block(M.gt_ranks(v2m.T, relevant=shows), with_ranks=with_ranks)}
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


def rank_gallery(scorer, gallery, groups=None, what=None, boundaries=None, track_paths=None, with_ranks=False):
    """One scorer on a test gallery, through the code retrieve.py runs: {"blocks": both directions,
    "library_metrics": MGSV-EC's metrics (R@K over unique tracks, mIoU, MoR@K), "answers": (indices, scores, their
    moments, the moment found on the true track) of each query's ANSWERS best, "queries", "library"}."""
    what = what or f"{scorer.name} (test)"
    library = embed_library(scorer, gallery.track_rows, track_paths)
    queries = embed_query_set(scorer, gallery.videos, boundaries)
    scores = score_rows(scorer, queries, library)
    blocks = score_blocks(scores, gallery.gt, groups, what, with_ranks)
    idx, top = answers(scorer, queries, library, ANSWERS)
    n, width = idx.shape
    found = moments(scorer, queries, library, np.repeat(np.arange(n), width), idx.ravel()).reshape(n, width, 2)
    on_truth = moments(scorer, queries, library, np.arange(n), gallery.gt)
    lengths = library["seconds"][gallery.gt]
    ranks = blocks["video_to_music"]["ranks"] if with_ranks else M.gt_ranks(scores, groups=groups, gt=gallery.gt)
    library_block = moments_metrics.library_metrics(ranks, gallery.moments, on_truth, idx, found, gallery.gt, lengths)
    if with_ranks:
        library_block["ious"] = [round(float(x), 4) for x in moments_metrics.iou(on_truth, gallery.moments, lengths)]
    return {"blocks": blocks, "library_metrics": library_block, "answers": (idx, top, found, on_truth), "queries": queries,
            "library": library}


def scorer_block(scorer, gallery, groups, what, boundaries=None, track_paths=None):
    """A baseline's row: both directions and the library metrics, with per-query ranks and IoUs (for paired
    comparisons with the model)."""
    result = rank_gallery(scorer, gallery, groups, what, boundaries, track_paths, with_ranks=True)
    return {**result["blocks"], "library": result["library_metrics"]}


def baselines(ckpt, gallery, groups):
    """Chance, tuned pooled CCA and the tuned time-aligned linear model on the test gallery.

    The baselines are fitted on the checkpoint's training ids and tuned on its validation ids, read from its
    training folder; without validation ids (or training data) only chance is given, with the reason.
    """
    n_tracks = len(gallery.tracks)
    out = {"chance": M.chance_block(n_tracks, groups, gt=gallery.gt), "cca": None, "aligned_linear": None,
           "library_chance": moments_metrics.library_chance(n_tracks, gallery.moments,
                                                            [len(gallery.track_rows[j]) for j in gallery.gt])}
    data_dir, train_ids, val_ids = ckpt.get("train_data_dir"), ckpt.get("train_ids"), ckpt.get("val_ids")
    if not (data_dir and Path(data_dir).is_dir() and train_ids and val_ids and len(val_ids) >= 2):
        out["skipped"] = "the checkpoint has no validation ids or its training folder is gone"
        print(f"baselines: {out['skipped']}; only chance is reported", file=sys.stderr)
        return out
    dims = (gallery.videos[0].shape[1], gallery.track_rows[0].shape[1])
    max_seconds = (ckpt.get("run_args") or ckpt.get("args") or {}).get("max_seconds")
    _, tv, ta = load_sequences(data_dir, train_ids, max_seconds, dims, "baseline train features")
    val = load_gallery(data_dir, val_ids, dims, "baseline validation features")  # tuned on whole tracks, as tested
    pool = lambda rows: np.stack([r.mean(0) for r in rows])  # noqa: E731
    for name, baseline in (("cca", tuned_cca((pool(tv), pool(ta)), val)),
                           ("aligned_linear", tuned_aligned_linear((tv, ta), val))):
        out[name] = {**scorer_block(BaselineScorer(baseline), gallery, groups, f"{name} baseline (test)"), **baseline.settings()}
    return out


def provenance_banner(prov):
    """A warning line when features came from random (test) weights, else None."""
    kinds = random_weight_kinds(prov)
    if kinds:
        return f"{' and '.join(kinds)} features were computed with RANDOM weights: the numbers say nothing about real music"
    return None


def zeroshot_folders(test_data_dir, ids, clip_dir=None, wav2clip_dir=None):
    """(clip rows folder, wav2clip rows folder) for the zero-shot row, or None.

    Without flags: the `clip` and `wav2clip` folders beside the feature folders that DATA's symlinks point
    into (vmnet/prepare.py links DATA/video/<id>.npy to FEATURES/clip/<id>.npy), when they hold every id.
    """
    if not ids:
        return None
    features = Path(test_data_dir, "audio", f"{ids[0]}.npy").resolve().parent.parent
    clip_dir = Path(clip_dir or features / "clip")
    wav2clip_dir = Path(wav2clip_dir or features / ROWS)
    if all((clip_dir / f"{vid}.npy").is_file() and (wav2clip_dir / f"{vid}.npy").is_file() for vid in ids):
        return clip_dir, wav2clip_dir
    return None


def zeroshot_block(clip_dir, wav2clip_dir, ids, groups=None, music="track"):
    """The zero-shot Wav2CLIP row: clip rows of the test videos against each id's wav2clip track, whole, ranked
    by vmr.zeroshot.ZeroShotScorer. Raises ValueError naming the file when one is missing or malformed."""
    videos, tracks, paths = [], {}, {}
    for vid in ids:
        files = Path(clip_dir) / f"{vid}.npy", Path(wav2clip_dir) / f"{vid}.npy"
        try:
            videos.append(read_rows(files[0], DIM))
            tracks[vid] = read_rows(files[1], DIM)
        except (OSError, ValueError) as e:
            raise ValueError(f"{vid}: {e}") from None
        paths[vid] = files[1]
    order = sorted(tracks)
    gallery = Gallery(list(ids), videos, order, [tracks[t] for t in order], np.array([order.index(v) for v in ids]),
                      np.array([[0.0, min(len(v), len(tracks[t]))] for v, t in zip(videos, ids)]))
    labels = None if groups is None else [dict(zip(ids, groups))[t] for t in order]
    return scorer_block(ZeroShotScorer(music), gallery, labels, "zero-shot (test)", track_paths=[paths[t] for t in order])


def fad_folder(ckpt, test_data_dir):
    """The folder of per-second VGGish rows of the test tracks, when the model's music is VGGish, else None."""
    prov = ckpt.get("provenance") or {}
    if "vggish" not in str((prov.get("audio") or {}).get("model", "")).lower():
        return None
    source = Path(test_data_dir) / "split.json"  # a split folder: the rows' files are in the folder it was written from
    if source.is_file():
        src = json.loads(source.read_text()).get("source")
        return Path(src) / "audio" if src and (Path(src) / "audio").is_dir() else None
    return Path(test_data_dir) / "audio"


def evaluate(scorer, ckpt, checkpoint, test_data_dir, test_csv, out, flow_ranks=None, groups_csv=None, peaks_dir=None,
             fad_dir=None, av_align_variant="2025", seed=0, clip_dir=None, wav2clip_dir=None):
    """Every metric of the protocol for one checkpoint's scorer; writes metrics.json, retrieval.json and the
    recall PNG beside OUT; returns the metrics dict."""
    ids = read_ids(test_csv)
    provenance = check_test_split(ckpt, test_data_dir, ids, f"{scorer.name} test on {test_data_dir}")
    dims = (scorer.video_dim, scorer.audio_dim)
    check_dims(test_data_dir, ids, dims)
    gallery = load_gallery(test_data_dir, ids, dims)
    ids, tracks = gallery.ids, gallery.tracks
    if len(ids) < 2 or len(tracks) < 2:
        raise ValueError(f"{test_csv}: need at least 2 usable test ids and tracks, got {len(ids)} and {len(tracks)}")
    boundaries = None
    if flow_ranks:
        from feature_extraction.flowProcessor import read_ranks_csv

        table = read_ranks_csv(flow_ranks)
        boundaries = [table[vid]["segments"] if vid in table else None for vid in ids]
    groups = None
    if groups_csv:
        table = read_groups(groups_csv)
        groups = [table.get(t, t) for t in tracks]
    result = rank_gallery(scorer, gallery, groups, boundaries=boundaries, with_ranks=True)
    blocks, queries, library = result["blocks"], result["queries"], result["library"]
    top_idx, top_scores, found, on_truth = result["answers"]
    scorings = {scorer.scoring: {k: {key: v for key, v in b.items() if key != "ranks"} for k, b in blocks.items()}}
    if scorer.scoring != "pooled":  # the pooled cosine beside it, on the same embeddings
        scorings["pooled"] = score_blocks(queries["pooled"] @ library["pooled"].T, gallery.gt, groups, f"{scorer.name} (pooled)", False)
    truth = [tracks[j] for j in gallery.gt]
    top1 = [tracks[row[0]] for row in top_idx]
    metrics = {
        "model": scorer.name,
        "scorer": scorer.record(),
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": scorer.checkpoint_sha256,
        "features": feature_names(test_data_dir),
        "provenance": provenance,
        "test_csv": str(Path(test_csv).resolve()),
        "seed": seed,
        "gallery": len(tracks),
        "queries": len(ids),
        "scoring": scorer.scoring,
        "gallery_items": "unique whole tracks, ranked by the model's scorer (the ranking retrieve.py gives)",
        **blocks,
        "library": result["library_metrics"],
        "scorings": scorings,
        "batch1024": M.batch_metrics(queries["pooled"], library["pooled"][gallery.gt], 1024, seed),
        "baselines": baselines(ckpt, gallery, groups),
    }
    folders = zeroshot_folders(test_data_dir, ids, clip_dir, wav2clip_dir) if tracks == sorted(ids) else None
    if folders:
        metrics["baselines"]["zeroshot"] = zeroshot_block(*folders, ids, groups and [groups[tracks.index(v)] for v in ids])
    elif wav2clip_dir:
        raise ValueError(f"--wav2clip_dir {wav2clip_dir}: no clip and wav2clip rows for every test id (one track per id)")
    fad_dir = fad_dir or fad_folder(ckpt, test_data_dir)
    metrics["fad"] = M.fad_report(fad_dir, truth, top1, tracks, scorer.max_seconds) if fad_dir else None
    metrics["av_align"] = M.av_align_report(ids, top1, peaks_dir, av_align_variant, seed, truth,
                                            {"retrieved": found[:, 0, 0], "ground_truth": gallery.moments[:, 0]}) if peaks_dir else None
    entries = []
    for i, vid in enumerate(ids):
        entry = {"id": vid, "gt": truth[i], "moment": [float(x) for x in gallery.moments[i]],
                 "found": [int(x) for x in on_truth[i]],
                 "top": [{"id": tracks[j], "score": shown(scorer, s), "start": int(m[0]), "end": int(m[1])}
                         for j, s, m in zip(top_idx[i][:TOP], top_scores[i][:TOP], found[i][:TOP])]}
        if hasattr(scorer, "segment_matches"):
            entry["segments"] = scorer.segment_matches(queries, library, i, tracks)
        entries.append(entry)
    write_outputs(out, metrics, entries)
    return metrics


def write_outputs(out, metrics, queries):
    out = Path(out)
    write_json(out, metrics)
    write_json(out.parent / "retrieval.json", {"model": metrics["model"], "queries": queries})
    M.recall_curve_png(metrics, out.with_name(out.stem + "_recall.png"))


BASELINE_ROWS = (("cca", "tuned CCA"), ("aligned_linear", "aligned linear"), ("zeroshot", "zero-shot Wav2CLIP"))


def baseline_rows(metrics):
    rows = []
    for key, name in BASELINE_ROWS:
        block = metrics["baselines"].get(key)
        if block:
            rows += [(f"{name} v->m", block["video_to_music"]), (f"{name} m->v", block["music_to_video"])]
    return rows + [("chance", metrics["baselines"]["chance"])]


LIBRARY_COLUMNS = {"R@1": "R@1", "R@10": "R@10", "mIoU": "mIoU", "MoR@1 IoU>0.7": "MoR@1", "MoR@10 IoU>0.7": "MoR@10",
                   "MoR@10 IoU>0.7 retrieved": "MoR@10 ret"}


def table(rows, ks=("R@1", "R@5", "R@10", "R@100", "MedR")):
    """Rows of blocks under columns ks (keys, or {key: label}); a key a block lacks is shown as -."""
    labels = ks if isinstance(ks, dict) else {k: k for k in ks}
    print(f"{'':28}" + "".join(f"{label:>11}" for label in labels.values()))
    for name, block in rows:
        print(f"{name:28}" + "".join(f"{'-':>11}" if k not in block else f"{block[k]:11.1f}" if k == "MedR" else f"{block[k]:11.3f}"
                                     for k in labels))


def print_summary(metrics):
    """The model's rows (each scoring), its baselines and chance, then provenance warning, FAD and AV-Align."""
    rows = []
    for name, block in metrics["scorings"].items():
        label = metrics["model"] if len(metrics["scorings"]) == 1 else f"{metrics['model']} {name}"
        rows += [(f"{label} v->m", block["video_to_music"]), (f"{label} m->v", block["music_to_video"])]
    print(f"whole gallery N = {metrics['gallery']} whole tracks, {metrics['queries']} query videos; headline scoring: "
          f"{metrics['scoring']}")
    table(rows + baseline_rows(metrics))
    library_rows = [(metrics["model"], metrics["library"])] + [
        (name, metrics["baselines"][key]["library"]) for key, name in BASELINE_ROWS if (metrics["baselines"].get(key) or {}).get("library")]
    print("\nlibrary metrics (MGSV-EC): tracks and moments; MoR@K: the true track in the top K and its moment at IoU > 0.7")
    table(library_rows + [("chance", metrics["baselines"]["library_chance"])], LIBRARY_COLUMNS)
    banner = provenance_banner(metrics.get("provenance"))
    if banner:
        print(f"WARNING: {banner}")
    fad = metrics.get("fad")
    if fad:
        c = fad["chance"]
        print(f"FAD (post-ReLU VGGish rows) top-1 {fad['top1']:.3f}; chance {c['mean']:.3f} +- {c['std']:.3f} "
              f"({c['seeds']} seeds); ground truth 0")
    a = metrics.get("av_align")
    if a:
        print(f"AV-Align ({a['variant']}) retrieved {a['retrieved']:.3f}, ground truth {a['ground_truth']:.3f}, "
              f"shuffled {a['shuffled']:.3f}")


def build_parser(doc, checkpoint_help, aligned=False):
    """The test.py command line: the protocol's flags, and --scoring / --rerank for models with an aligned score."""
    from feature_extraction.cli import HelpFormatter

    p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--test_data_dir", required=True, help="folder with video/<id>.npy and audio/<id>.npy, or a split folder")
    p.add_argument("--test_csv_path", required=True, help="CSV of test ids (the whole gallery)")
    p.add_argument("--out", default="metrics.json", help="metrics.json path; retrieval.json and <stem>_recall.png go beside it")
    p.add_argument("--groups", help="CSV with columns ID,group: ids sharing a group (the same track) all count as hits")
    p.add_argument("--flow_ranks", help="ranks.csv giving the query videos' flow segments (default: the checkpoint's; ids "
                                        "missing from it are cut where their features change)")
    p.add_argument("--peaks_dir", help="av_peaks folder (video/<id>.npy, video/<id>.json, audio/<id>.npy) for AV-Align")
    p.add_argument("--av_align_variant", choices=("2025", "2023"), default="2025",
                   help="2025: one-to-one matching (bounded by 1); 2023: a video peak may match several audio peaks")
    p.add_argument("--fad_dir", help="folder of per-second VGGish rows <id>.npy for FAD (default: the test audio folder when it is VGGish)")
    p.add_argument("--wav2clip_dir", help="wav2clip rows of the test tracks for the zero-shot row (default: the wav2clip folder "
                                          "beside the feature folder the test audio links point into, when it has every id)")
    p.add_argument("--clip_dir", help="clip rows of the test videos for the zero-shot row (default: the clip folder beside it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch-1024 extra and the shuffled baselines")
    if aligned:
        p.add_argument("--scoring", choices=["pooled", "aligned"],
                       help="track score: pooled = cosine of track embeddings; aligned = mean cosine of the time-aligned "
                            "per-second embeddings (default: the one the checkpoint was selected on)")
        p.add_argument("--rerank", type=int, help="aligned scoring: pooled candidates rescored per query, as in retrieval "
                                                  "(default: the checkpoint's, 1000; 0 = every track)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def main(argv, doc, checkpoint_help, load, aligned=False):
    """test.py: `load(path, **options)` -> (scorer, checkpoint dict) of the model's package."""
    args = build_parser(doc, checkpoint_help, aligned).parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {"scoring": args.scoring, "rerank": args.rerank} if aligned else {}
    try:
        scorer, ckpt = load(args.checkpoint, **options)
        flow_ranks = args.flow_ranks or (ckpt.get("args") or {}).get("flow_ranks")
        metrics = evaluate(scorer, ckpt, args.checkpoint, args.test_data_dir, args.test_csv_path, args.out, flow_ranks,
                           args.groups, args.peaks_dir, args.fad_dir, args.av_align_variant, args.seed, args.clip_dir,
                           args.wav2clip_dir)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(metrics)
    print(f"wrote {args.out}")
    return 0
