"""Evaluate a segment Transformer checkpoint on the whole test gallery (VM-NET's metrics.json schema).

    python transformer/test.py --checkpoint runs/transformer/best.pt --test_data_dir data/symmv \
        --test_csv_path data/symmv/test.csv --flow_ranks features/flow/ranks.csv \
        --peaks_dir features/av_peaks --compare runs/vmnet --out runs/transformer/metrics.json

Track scores: pooled (cosine of track embeddings) and aligned (mean over the query video's
segments of the cosine with the candidate's music over the same seconds, reranking the pooled top
--rerank). Both are reported; --scoring picks the headline blocks, FAD, AV-Align and
retrieval.json. The "segment" block ranks every test video segment against every test music
segment (the match = the time-aligned segment of the same track). Test ids seen in training
(the checkpoint records them) are an error.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from feature_extraction.atomic import write_json
from transformer.data import load_items
from transformer.model import load_model
from transformer.scoring import aligned_matrices, best_segments, embed_items, embed_library, shown_score
from vmnet import metrics as M
from vmnet.data import check_overlap, load_pooled, read_ids
from vmnet.test import fad_block, feature_names, is_vggish, sha256_file


def whole_track_blocks(v2m, m2v, with_ranks=True):
    return {"video_to_music": M.recall_block(M.gt_ranks(v2m), with_ranks=with_ranks),
            "music_to_video": M.recall_block(M.gt_ranks(m2v), with_ranks=with_ranks)}


def top_tracks(scores, ids, k=5):
    """Per query row, the k best gallery ids with their scores (rerank offset removed)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[{"id": ids[j], "score": shown_score(scores[i, j])} for j in row] for i, row in enumerate(order)]


def segment_matches(embedded, gallery, ids):
    """For each query video segment: the gallery music segment with the highest cosine (retrieval.json)."""
    index, score = best_segments(embedded["video_seg"], gallery["seg"])
    out = [[] for _ in ids]
    for k, (j, s) in enumerate(zip(index, score)):
        out[embedded["owner"][k]].append({
            "start": int(embedded["start"][k]), "end": int(embedded["end"][k]), "track": ids[gallery["owner"][j]],
            "track_start": int(gallery["start"][j]), "track_end": int(gallery["end"][j]), "score": float(s)})
    return out


def vmnet_on_gallery(vmnet_dir, test_data_dir, ids, seed):
    """VM-NET's whole-gallery metrics on exactly these ids (VMNET_DIR/best.pt, or a checkpoint file)."""
    from vmnet.model import embed_rows, model_from_checkpoint

    path = Path(vmnet_dir)
    path = path / "best.pt" if path.is_dir() else path
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    model = model_from_checkpoint(ckpt)
    dims = (ckpt["config"]["video_dim"], ckpt["config"]["audio_dim"])
    kept, video, audio = load_pooled(test_data_dir, ids, ckpt["args"].get("max_seconds"), dims, desc="VM-NET features")
    if kept != list(ids):
        raise ValueError(f"{path}: VM-NET could not load {len(ids) - len(kept)} of the gallery's ids")
    v_emb, m_emb = embed_rows(model.embed_video, video), embed_rows(model.embed_music, audio)
    out = M.retrieval_metrics(v_emb, m_emb, with_ranks=False)
    out.update(checkpoint=str(path), checkpoint_sha256=sha256_file(path), gallery=len(ids),
               batch1024=M.batch_metrics(v_emb, m_emb, 1024, seed))
    return out


def evaluate(checkpoint, test_data_dir, test_csv, out, flow_ranks=None, segments_from="ranks", scoring="pooled",
             rerank=100, music_segments="video", train_data_dir=None, train_csv=None, peaks_dir=None, fad_dir=None,
             av_align_variant="2025", compare=None, seed=0, max_seconds=None, batch_size=256):
    """Compute every metric; write metrics.json, retrieval.json and the recall PNG; return the metrics dict."""
    model, ckpt = load_model(checkpoint)
    cfg, run_args = ckpt["config"], ckpt["args"]
    max_seconds = max_seconds if max_seconds is not None else run_args.get("max_seconds")
    flow_ranks = flow_ranks or run_args.get("flow_ranks")
    train_data_dir = train_data_dir or run_args.get("train_data_dir")
    train_csv = train_csv or run_args.get("train_csv_path")

    ids = read_ids(test_csv)
    check_overlap(list(ckpt["train_ids"]) + list(ckpt["val_ids"]), ids)
    items = load_items(test_data_dir, ids, flow_ranks, segments_from, cfg["max_seq_len"], max_seconds,
                       run_args.get("n_bkps", 7), run_args.get("min_seconds", 10))
    ids, n = [it.id for it in items], len(items)
    music = [it.audio for it in items]
    embedded = embed_items(model, items, batch_size)
    if music_segments == "audio":
        gallery = embed_library(model, music, cfg["max_seq_len"], run_args.get("n_bkps", 7),
                                run_args.get("min_seconds", 10), batch_size)
    else:
        gallery = dict(owner=embedded["owner"], start=embedded["start"], end=embedded["end"],
                       seg=embedded["audio_seg"], track=embedded["audio"])
    pooled = (embedded["video"] @ gallery["track"].T).numpy().astype(np.float64)
    v2m_aligned, m2v_aligned = aligned_matrices(model, pooled, embedded, music, rerank, batch_size)
    matrices = {"pooled": (pooled, pooled.T), "aligned": (v2m_aligned, m2v_aligned)}
    chosen = whole_track_blocks(*matrices[scoring])
    other = "aligned" if scoring == "pooled" else "pooled"
    scorings = {scoring: {k: {key: v for key, v in block.items() if key != "ranks"} for k, block in chosen.items()},
                other: whole_track_blocks(*matrices[other], with_ranks=False)}
    scorings["aligned"]["rerank"] = rerank if 0 < rerank < n else n

    segment = M.retrieval_metrics(embedded["video_seg"].numpy(), embedded["audio_seg"].numpy())
    segment.update(n_segments=len(embedded["owner"]), chance=M.chance_block(len(embedded["owner"])),
                   level="segment: queries = all test video segments, gallery = all test music segments, "
                         "match = the time-aligned segment of the same track")

    cca = None
    train_ids = read_ids(train_csv) if train_csv and Path(train_csv).is_file() else []
    if train_ids and train_data_dir:
        dims = (cfg["video_dim"], cfg["audio_dim"])
        _, tv, ta = load_pooled(train_data_dir, train_ids, max_seconds, dims, desc="CCA train features")
        test_v = np.stack([it.video.mean(0) for it in items])
        test_a = np.stack([it.audio.mean(0) for it in items])
        cca = M.score_metrics(M.cca_scores(tv, ta, test_v, test_a), with_ranks=False)

    tops = top_tracks(matrices[scoring][0], ids)
    top1 = [t[0]["id"] for t in tops]
    if fad_dir is None and is_vggish(Path(test_data_dir) / "audio"):
        fad_dir = Path(test_data_dir) / "audio"
    metrics = {
        "model": "Transformer",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "features": feature_names(test_data_dir),
        "test_csv": str(test_csv),
        "seed": seed,
        "gallery": n,
        "scoring": scoring,
        "music_segments": music_segments,
        "video_to_music": chosen["video_to_music"],
        "music_to_video": chosen["music_to_video"],
        "scorings": scorings,
        "batch1024": M.batch_metrics(embedded["video"].numpy(), gallery["track"].numpy(), 1024, seed),
        "baselines": {"chance": M.chance_block(n), "cca": cca},
        "segment": segment,
        "fad": fad_block(fad_dir, ids, top1, seed, max_seconds) if fad_dir else None,
        "av_align": M.av_align_report(ids, top1, peaks_dir, av_align_variant, seed) if peaks_dir else None,
        "compare": {"VM-NET": vmnet_on_gallery(compare, test_data_dir, ids, seed)} if compare else None,
    }
    out = Path(out)
    write_json(out, metrics)
    matches = segment_matches(embedded, gallery, ids)
    write_json(out.parent / "retrieval.json", {"model": "Transformer", "scoring": scoring, "queries": [
        {"id": vid, "gt": vid, "top": top, "segments": segs} for vid, top, segs in zip(ids, tops, matches)]})
    M.recall_curve_png(metrics, out.with_name(out.stem + "_recall.png"))
    return metrics


def print_summary(metrics):
    """Whole-gallery table: both scorings, VM-NET (with --compare), CCA, chance; then the segment level."""
    ks = ("R@1", "R@5", "R@10", "R@100", "MedR")
    rows = []
    for name in ("pooled", "aligned"):
        block = metrics["scorings"][name]
        rows += [(f"Transformer {name} v->m", block["video_to_music"]), (f"Transformer {name} m->v", block["music_to_video"])]
    vmnet = (metrics.get("compare") or {}).get("VM-NET")
    if vmnet:
        rows += [("VM-NET v->m", vmnet["video_to_music"]), ("VM-NET m->v", vmnet["music_to_video"])]
    cca = metrics["baselines"]["cca"]
    if cca:
        rows += [("CCA v->m", cca["video_to_music"]), ("CCA m->v", cca["music_to_video"])]
    rows.append(("chance", metrics["baselines"]["chance"]))
    print(f"whole gallery N = {metrics['gallery']} tracks (aligned reranks the pooled top "
          f"{metrics['scorings']['aligned']['rerank']}; headline scoring: {metrics['scoring']})")
    table(rows, ks)
    seg = metrics["segment"]
    print(f"segment level: {seg['n_segments']} video segments vs {seg['n_segments']} music segments")
    table([("segment v->m", seg["video_to_music"]), ("segment m->v", seg["music_to_video"]), ("chance", seg["chance"])], ks)
    if metrics["fad"]:
        print(f"FAD (VGGish space) top-1 {metrics['fad']['top1']:.3f} (shuffled {metrics['fad']['shuffled']:.3f}, ground truth 0)")
    if metrics["av_align"]:
        a = metrics["av_align"]
        print(f"AV-Align ({a['variant']}) retrieved {a['retrieved']:.3f}, ground truth {a['ground_truth']:.3f}, "
              f"shuffled {a['shuffled']:.3f}")


def table(rows, ks):
    print(f"{'':26}" + "".join(f"{k:>9}" for k in ks))
    for name, block in rows:
        print(f"{name:26}" + "".join(f"{block[k]:9.3f}" if k != "MedR" else f"{block[k]:9.1f}" for k in ks))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by transformer/train.py")
    p.add_argument("--test_data_dir", required=True, help="folder with video/<id>.npy and audio/<id>.npy")
    p.add_argument("--test_csv_path", required=True, help="CSV of test ids (the whole gallery)")
    p.add_argument("--out", default="metrics.json", help="metrics.json path; retrieval.json and <stem>_recall.png go beside it")
    p.add_argument("--flow_ranks", help="ranks.csv with the test videos' segments (default: the checkpoint's)")
    p.add_argument("--segments_from", choices=["ranks", "features"], default="ranks",
                   help="ranks: ids missing from ranks.csv are skipped with a warning; features: they are cut where "
                        "their video features change (default ranks)")
    p.add_argument("--scoring", choices=["pooled", "aligned"], default="pooled",
                   help="headline track score (both are reported): pooled = cosine of track embeddings; aligned = "
                        "mean cosine of each video segment with the candidate's music over the same seconds")
    p.add_argument("--rerank", type=int, default=100,
                   help="aligned scoring reranks each query's pooled top N (default 100; 0 = score the whole gallery aligned)")
    p.add_argument("--music_segments", choices=["video", "audio"], default="video",
                   help="segments of a gallery track for its pooled embedding: video = its own video's (the time-aligned "
                        "ones, default); audio = cut from its audio features as retrieve.py's index does (slow: Dynp per track)")
    p.add_argument("--train_data_dir", help="train features for the CCA baseline (default: the checkpoint's)")
    p.add_argument("--train_csv_path", help="train CSV for the CCA baseline (default: the checkpoint's)")
    p.add_argument("--peaks_dir", help="av_peaks folder (video/<id>.npy, video/<id>.json, audio/<id>.npy) for AV-Align")
    p.add_argument("--av_align_variant", choices=("2025", "2023"), default="2025",
                   help="2025: one-to-one matching (bounded by 1); 2023: a video peak may match several audio peaks")
    p.add_argument("--fad_dir", help="folder of per-second VGGish rows <id>.npy for FAD (default: the test audio folder when it is VGGish)")
    p.add_argument("--compare", metavar="VMNET_DIR", help="VM-NET run folder (its best.pt) or checkpoint: evaluated on the same gallery, side by side")
    p.add_argument("--max_seconds", type=int, help="use only the first N seconds (default: as in training)")
    p.add_argument("--batch_size", type=int, default=256, help="segments per encoder pass (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch-1024 extra and the shuffled baselines")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        metrics = evaluate(args.checkpoint, args.test_data_dir, args.test_csv_path, args.out, args.flow_ranks,
                           args.segments_from, args.scoring, args.rerank, args.music_segments, args.train_data_dir,
                           args.train_csv_path, args.peaks_dir, args.fad_dir, args.av_align_variant, args.compare,
                           args.seed, args.max_seconds, args.batch_size)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_summary(metrics)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
