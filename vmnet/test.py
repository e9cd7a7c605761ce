r"""Evaluate a VM-NET checkpoint on the whole test gallery.

    python vmnet/test.py --checkpoint runs/vmnet/best.pt --test_data_dir data/yt8m \
        --test_csv_path data/yt8m/test.csv --out runs/vmnet/metrics.json

Writes metrics.json (both directions, batch-1024 extra, chance and CCA baselines, FAD and
AV-Align when their inputs exist), retrieval.json (top-5 tracks per query) and a recall@K
PNG beside it.
"""
import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from feature_extraction.atomic import write_json
from vmnet import metrics as M
from vmnet.data import check_overlap, feature_names, load_pooled, read_groups, read_ids
from vmnet.model import embed_rows, model_from_checkpoint


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_vggish(folder):
    prov = Path(folder) / "_feature.json"
    return prov.is_file() and "vggish" in prov.read_text().lower()


def fad_block(fad_dir, query_ids, top1_ids, seed, max_seconds=None):
    """FAD between the ground-truth tracks and the top-1 retrieved tracks, in fad_dir's space.

    All per-second rows of the tracks of a set are pooled (a track retrieved twice counts twice).
    A seeded shuffled assignment gives the chance level; ground truth vs itself is 0.
    """
    def rows(ids):
        out = []
        for vid in ids:
            x = np.load(Path(fad_dir) / f"{vid}.npy")
            out.append(x[:max_seconds] if max_seconds else x)
        return np.concatenate(out).astype(np.float64)

    shuffled = [query_ids[i] for i in np.random.default_rng(seed).permutation(len(query_ids))]
    reference = rows(query_ids)
    return {"space": str(fad_dir), "top1": M.fad(reference, rows(top1_ids)), "shuffled": M.fad(reference, rows(shuffled)),
            "ground_truth": 0.0, "n_queries": len(query_ids), "n_reference_rows": len(reference)}


def top_tracks(v_emb, m_emb, ids, k=5, chunk=256):
    """Per video query, the k best tracks by cosine with scores (stable order), `chunk` queries at a time."""
    v, m = M.normalize_rows(v_emb), M.normalize_rows(m_emb)
    out = []
    for start in range(0, len(v), chunk):
        scores = v[start:start + chunk] @ m.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out += [[{"id": ids[j], "score": float(scores[i, j])} for j in row] for i, row in enumerate(order)]
    return out


def evaluate(checkpoint, test_data_dir, test_csv, out, train_data_dir=None, train_csv=None, groups_csv=None,
             peaks_dir=None, fad_dir=None, av_align_variant="2025", seed=0, max_seconds=None):
    """Compute every metric, write metrics.json, retrieval.json and the recall PNG; return the metrics dict."""
    ckpt = torch.load(checkpoint, weights_only=True, map_location="cpu")
    model = model_from_checkpoint(ckpt)
    cfg, run_args = ckpt["config"], ckpt["args"]
    max_seconds = max_seconds if max_seconds is not None else run_args.get("max_seconds")
    train_data_dir = train_data_dir or run_args.get("train_data_dir")
    train_csv = train_csv or run_args.get("train_csv_path")

    ids = read_ids(test_csv)
    train_ids = read_ids(train_csv) if train_csv and Path(train_csv).is_file() else []
    check_overlap(train_ids, ids)
    dims = (cfg["video_dim"], cfg["audio_dim"])
    ids, video, audio = load_pooled(test_data_dir, ids, max_seconds, dims, desc="test features")
    n = len(ids)
    v_emb = embed_rows(model.embed_video, video)
    m_emb = embed_rows(model.embed_music, audio)

    groups = None
    if groups_csv:
        table = read_groups(groups_csv)
        groups = [table.get(vid, vid) for vid in ids]
    result = M.retrieval_metrics(v_emb, m_emb, groups)

    cca = None
    if train_ids and train_data_dir:
        _, tv, ta = load_pooled(train_data_dir, train_ids, max_seconds, dims, desc="CCA train features")
        cca = M.retrieval_metrics(*M.cca_embed(tv, ta, video, audio), groups, with_ranks=False)

    tops = top_tracks(v_emb, m_emb, ids)
    top1 = [t[0]["id"] for t in tops]

    if fad_dir is None and is_vggish(Path(test_data_dir) / "audio"):
        fad_dir = Path(test_data_dir) / "audio"
    fad = fad_block(fad_dir, ids, top1, seed, max_seconds) if fad_dir else None
    av = M.av_align_report(ids, top1, peaks_dir, av_align_variant, seed) if peaks_dir else None

    metrics = {
        "model": "VM-NET",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "features": feature_names(test_data_dir),
        "test_csv": str(test_csv),
        "seed": seed,
        "gallery": n,
        "video_to_music": result["video_to_music"],
        "music_to_video": result["music_to_video"],
        "batch1024": M.batch_metrics(v_emb, m_emb, 1024, seed),
        "baselines": {"chance": M.chance_block(n), "cca": cca},
        "segment": None,
        "fad": fad,
        "av_align": av,
    }
    out = Path(out)
    write_json(out, metrics)
    write_json(out.parent / "retrieval.json", {"model": "VM-NET", "queries": [
        {"id": vid, "gt": vid, "top": top} for vid, top in zip(ids, tops)]})
    M.recall_curve_png(metrics, out.with_name(out.stem + "_recall.png"))
    return metrics


def print_summary(metrics):
    """A small table: the model beside chance and CCA, both directions."""
    ks = ("R@1", "R@5", "R@10", "R@100", "MedR")
    rows = [("VM-NET v->m", metrics["video_to_music"]), ("VM-NET m->v", metrics["music_to_video"])]
    cca = metrics["baselines"]["cca"]
    if cca:
        rows += [("CCA v->m", cca["video_to_music"]), ("CCA m->v", cca["music_to_video"])]
    rows.append(("chance", metrics["baselines"]["chance"]))
    print(f"whole gallery N = {metrics['gallery']}")
    print(f"{'':14}" + "".join(f"{k:>9}" for k in ks))
    for name, block in rows:
        print(f"{name:14}" + "".join(f"{block[k]:9.3f}" if k != "MedR" else f"{block[k]:9.1f}" for k in ks))
    if metrics["fad"]:
        print(f"FAD top-1 {metrics['fad']['top1']:.3f} (shuffled {metrics['fad']['shuffled']:.3f})")
    if metrics["av_align"]:
        a = metrics["av_align"]
        print(f"AV-Align retrieved {a['retrieved']:.3f}, ground truth {a['ground_truth']:.3f}, shuffled {a['shuffled']:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by vmnet/train.py")
    p.add_argument("--test_data_dir", required=True, help="folder with video/<id>.npy and audio/<id>.npy")
    p.add_argument("--test_csv_path", required=True, help="CSV of test ids (the whole gallery)")
    p.add_argument("--out", default="metrics.json", help="metrics.json path; retrieval.json and <stem>_recall.png go beside it")
    p.add_argument("--train_data_dir", help="train features for the CCA baseline (default: the checkpoint's)")
    p.add_argument("--train_csv_path", help="train CSV for the CCA baseline and the overlap check (default: the checkpoint's)")
    p.add_argument("--groups", help="CSV with columns ID,group: ids sharing a group (the same track) all count as hits")
    p.add_argument("--peaks_dir", help="av_peaks folder (video/<id>.npy, video/<id>.json, audio/<id>.npy) for AV-Align")
    p.add_argument("--av_align_variant", choices=("2025", "2023"), default="2025",
                   help="2025: one-to-one matching (bounded by 1); 2023: a video peak may match several audio peaks")
    p.add_argument("--fad_dir", help="folder of per-second VGGish rows <id>.npy for FAD (default: the test audio folder when it is VGGish)")
    p.add_argument("--max_seconds", type=int, help="use only the first N seconds (default: as in training)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch-1024 extra and the shuffled baselines")
    args = p.parse_args(argv)
    try:
        metrics = evaluate(args.checkpoint, args.test_data_dir, args.test_csv_path, args.out, args.train_data_dir,
                           args.train_csv_path, args.groups, args.peaks_dir, args.fad_dir, args.av_align_variant,
                           args.seed, args.max_seconds)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(metrics)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
