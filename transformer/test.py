"""Evaluate a segment Transformer checkpoint on the whole test gallery (VM-NET's metrics.json schema),
under the protocol of the README's "Protocol".

    python transformer/test.py --checkpoint runs/transformer/best.pt --test_data_dir data/symmv \
        --test_csv_path data/symmv/test.csv --flow_ranks features/flow/ranks.csv \
        --peaks_dir features/av_peaks --compare runs/vmnet --out runs/transformer/metrics.json

Every gallery track is cut from its own music (vmr.segments), as a library track without video is;
the query videos at their flow segments. Track scores: pooled (cosine of track embeddings) and aligned
(mean cosine of the time-aligned per-second embeddings, on each query's pooled top --rerank). --scoring
picks the headline blocks, FAD, AV-Align and retrieval.json; the other scoring is reported beside it.
Test ids seen in training or validation, and test features of another provenance, are errors.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from transformer.data import item_rows, load_items
from transformer.model import load_model
from transformer.scoring import best_segments, embed_items, score_matrices, shown_score
from vmnet.data import check_dims, feature_names, read_ids
from vmr import metrics as M
from vmr.evaluation import (add_common_arguments, baseline_rows, check_test_split, common_blocks, groups_of,
                            print_common, score_blocks, sha256_file, table, top_tracks, write_outputs)


def vmnet_on_gallery(vmnet_dir, test_data_dir, ids, video, audio, groups, seed):
    """VM-NET's whole-gallery metrics on exactly these items (VMNET_DIR/best.pt, or a checkpoint file)."""
    from vmnet.model import embed_rows, model_from_checkpoint

    path = Path(vmnet_dir)
    path = path / "best.pt" if path.is_dir() else path
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    check_test_split(ckpt, test_data_dir, ids, f"VM-NET {path} on {test_data_dir}")
    model = model_from_checkpoint(ckpt)
    v_emb = embed_rows(model.embed_video, np.stack([v.mean(0) for v in video]))
    m_emb = embed_rows(model.embed_music, np.stack([a.mean(0) for a in audio]))
    scores = M.check_finite(v_emb @ m_emb.T, "VM-NET (compare): test scores")
    out = score_blocks(scores, scores.T, groups, "VM-NET (compare)", with_ranks=False)
    out.update(checkpoint=str(path.resolve()), checkpoint_sha256=sha256_file(path), gallery=len(ids),
               batch1024=M.batch_metrics(v_emb, m_emb, 1024, seed))
    return out


def evaluate(checkpoint, test_data_dir, test_csv, out, flow_ranks=None, segments_from="ranks", scoring=None,
             rerank=1000, groups_csv=None, peaks_dir=None, fad_dir=None, av_align_variant="2025", compare=None, seed=0,
             max_seconds=None, clip_dir=None, wav2clip_dir=None):
    """Compute every metric; write metrics.json, retrieval.json and the recall PNG; return the metrics dict."""
    model, ckpt = load_model(checkpoint)
    cfg, run_args = ckpt["config"], ckpt["run_args"]
    scoring = scoring or run_args.get("scoring", "aligned")
    max_seconds = max_seconds if max_seconds is not None else run_args.get("max_seconds")
    flow_ranks = flow_ranks or ckpt["args"].get("flow_ranks")
    ids = read_ids(test_csv)
    provenance = check_test_split(ckpt, test_data_dir, ids, f"Transformer test on {test_data_dir}")
    dims = (cfg["video_dim"], cfg["audio_dim"])
    check_dims(test_data_dir, ids, dims)
    items = load_items(test_data_dir, ids, flow_ranks, segments_from, cfg["max_seq_len"], max_seconds,
                       run_args["n_bkps"], run_args["min_seconds"], dims=dims)
    ids, n = [it.id for it in items], len(items)
    if n < 2:
        raise ValueError(f"{test_csv}: need at least 2 usable test ids, got {n}")
    groups = groups_of(groups_csv, ids)
    embedded = embed_items(model, items)
    blocks, matrices = {}, {}
    for name in ("pooled", "aligned") if scoring == "aligned" else ("pooled",):
        matrices[name] = score_matrices(embedded["video_seq"], embedded["audio_seq"], embedded["video"], embedded["audio"],
                                        name, rerank, what=f"Transformer ({name}, test)")
        blocks[name] = score_blocks(*matrices[name], groups, f"Transformer ({name}, test)", with_ranks=name == scoring)
    if "aligned" in blocks:
        blocks["aligned"]["rerank"] = rerank if 0 < rerank < n else n
    v2m = matrices[scoring][0]
    tops = top_tracks(v2m, ids, shown=shown_score)
    top1 = [t[0]["id"] for t in tops]
    video, audio = item_rows(items, "video"), item_rows(items, "audio")  # lazy for a split folder
    metrics = {
        "model": "Transformer",
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": sha256_file(checkpoint),
        "features": feature_names(test_data_dir),
        "provenance": provenance,
        "test_csv": str(Path(test_csv).resolve()),
        "seed": seed,
        "gallery": n,
        "scoring": scoring,
        "music_segments": "audio: every track cut at its own change points (vmr.segments.music_segments)",
        "video_to_music": blocks[scoring]["video_to_music"],
        "music_to_video": blocks[scoring]["music_to_video"],
        "scorings": {name: {k: {key: v for key, v in b.items() if key != "ranks"} if isinstance(b, dict) else b
                            for k, b in block.items()} for name, block in blocks.items()},
        "batch1024": M.batch_metrics(embedded["video"], embedded["audio"], 1024, seed),
        "segment": None,
        **common_blocks(ckpt, test_data_dir, ids, video, audio, top1, groups, max_seconds, peaks_dir, fad_dir,
                        av_align_variant, seed, clip_dir, wav2clip_dir),
        "compare": {"VM-NET": vmnet_on_gallery(compare, test_data_dir, ids, video, audio, groups, seed)} if compare else None,
    }
    matches = best_segments(items, embedded, ids)
    write_outputs(out, metrics, [{"id": vid, "gt": vid, "top": top, "segments": m} for vid, top, m in zip(ids, tops, matches)])
    return metrics


def print_summary(metrics):
    """Whole-gallery table: both scorings, VM-NET (with --compare), the baselines and chance."""
    rows = []
    for name, block in metrics["scorings"].items():
        rows += [(f"Transformer {name} v->m", block["video_to_music"]), (f"Transformer {name} m->v", block["music_to_video"])]
    vmnet = (metrics.get("compare") or {}).get("VM-NET")
    if vmnet:
        rows += [("VM-NET v->m", vmnet["video_to_music"]), ("VM-NET m->v", vmnet["music_to_video"])]
    print(f"whole gallery N = {metrics['gallery']} tracks, each cut from its own music; headline scoring: {metrics['scoring']}")
    table(rows + baseline_rows(metrics))
    print_common(metrics)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by transformer/train.py")
    add_common_arguments(p)
    p.add_argument("--flow_ranks", help="ranks.csv with the test videos' flow segments (default: the checkpoint's)")
    p.add_argument("--segments_from", choices=["ranks", "features"], default="ranks",
                   help="video segments. ranks: ids missing from ranks.csv are skipped with a warning; features: they are "
                        "cut where their video features change (default ranks)")
    p.add_argument("--scoring", choices=["pooled", "aligned"],
                   help="headline track score: pooled = cosine of track embeddings; aligned = mean cosine of the "
                        "time-aligned per-second embeddings (default: the one the checkpoint was selected on)")
    p.add_argument("--rerank", type=int, default=1000,
                   help="aligned scoring rescoring each query's pooled top N (default 1000; 0 = the whole gallery)")
    p.add_argument("--compare", metavar="VMNET_DIR", help="VM-NET run folder (its best.pt) or checkpoint: evaluated on the same gallery (default: none)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        metrics = evaluate(args.checkpoint, args.test_data_dir, args.test_csv_path, args.out, args.flow_ranks,
                           args.segments_from, args.scoring, args.rerank, args.groups, args.peaks_dir, args.fad_dir,
                           args.av_align_variant, args.compare, args.seed, args.max_seconds, args.clip_dir, args.wav2clip_dir)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_summary(metrics)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
