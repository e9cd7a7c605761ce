r"""Evaluate a VM-NET checkpoint on the whole test gallery, under the protocol of the README's "Protocol".

    python vmnet/test.py --checkpoint runs/vmnet/best.pt --test_data_dir data/yt8m \
        --test_csv_path data/yt8m/test.csv --out runs/vmnet/metrics.json

Writes metrics.json (both directions, the batch-1024 extra, chance, tuned CCA and the time-aligned
linear baseline, the zero-shot row when wav2clip music features are given, FAD and AV-Align when their
inputs exist, the feature provenance), retrieval.json (top-5 tracks per query) and a recall@K PNG beside it.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vmnet.data import feature_names, load_sequences, read_ids
from vmnet.model import embed_rows, model_from_checkpoint
from vmr import metrics as M
from vmr.evaluation import (add_common_arguments, baseline_rows, check_test_split, common_blocks, groups_of,
                            print_common, score_blocks, sha256_file, table, top_tracks, write_outputs)


def evaluate(checkpoint, test_data_dir, test_csv, out, groups_csv=None, peaks_dir=None, fad_dir=None,
             av_align_variant="2025", seed=0, max_seconds=None, clip_dir=None, wav2clip_dir=None):
    """Compute every metric, write metrics.json, retrieval.json and the recall PNG; return the metrics dict."""
    ckpt = torch.load(checkpoint, weights_only=True, map_location="cpu")
    model = model_from_checkpoint(ckpt)
    cfg = ckpt["config"]
    max_seconds = max_seconds if max_seconds is not None else ckpt["args"].get("max_seconds")
    ids = read_ids(test_csv)
    provenance = check_test_split(ckpt, test_data_dir, ids, f"VM-NET test on {test_data_dir}")
    ids, video, audio = load_sequences(test_data_dir, ids, max_seconds, (cfg["video_dim"], cfg["audio_dim"]), "test features")
    if len(ids) < 2:
        raise ValueError(f"{test_csv}: need at least 2 usable test ids, got {len(ids)}")
    v_emb = M.check_finite(embed_rows(model.embed_video, np.stack([v.mean(0) for v in video])), "VM-NET: test video embeddings")
    m_emb = M.check_finite(embed_rows(model.embed_music, np.stack([a.mean(0) for a in audio])), "VM-NET: test music embeddings")
    groups = groups_of(groups_csv, ids)
    scores = v_emb @ m_emb.T
    result = score_blocks(scores, scores.T, groups, "VM-NET (test)")
    tops = top_tracks(scores, ids)
    top1 = [t[0]["id"] for t in tops]
    metrics = {
        "model": "VM-NET",
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": sha256_file(checkpoint),
        "features": feature_names(test_data_dir),
        "provenance": provenance,
        "test_csv": str(Path(test_csv).resolve()),
        "seed": seed,
        "gallery": len(ids),
        "video_to_music": result["video_to_music"],
        "music_to_video": result["music_to_video"],
        "batch1024": M.batch_metrics(v_emb, m_emb, 1024, seed),
        "segment": None,
        **common_blocks(ckpt, test_data_dir, ids, video, audio, top1, groups, max_seconds, peaks_dir, fad_dir,
                        av_align_variant, seed, clip_dir, wav2clip_dir),
    }
    write_outputs(out, metrics, [{"id": vid, "gt": vid, "top": top} for vid, top in zip(ids, tops)])
    return metrics


def print_summary(metrics):
    """The model beside its baselines and chance, both directions."""
    print(f"whole gallery N = {metrics['gallery']}")
    table([("VM-NET v->m", metrics["video_to_music"]), ("VM-NET m->v", metrics["music_to_video"])] + baseline_rows(metrics))
    print_common(metrics)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt written by vmnet/train.py")
    add_common_arguments(p)
    args = p.parse_args(argv)
    try:
        metrics = evaluate(args.checkpoint, args.test_data_dir, args.test_csv_path, args.out, args.groups, args.peaks_dir,
                           args.fad_dir, args.av_align_variant, args.seed, args.max_seconds, args.clip_dir, args.wav2clip_dir)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(metrics)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
