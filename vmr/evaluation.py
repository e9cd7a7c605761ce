"""The evaluation protocol both models' test.py follow (README "Protocol"), step by step.

1. The gallery is the test tracks; every query is ranked against all of them, both directions,
   pessimistic ties (vmr.metrics.gt_ranks); non-finite scores stop the evaluation.
2. Test ids seen in training or validation (the checkpoint lists them) are an error, and so are test
   features whose provenance (_feature.json) differs from the checkpoint's.
3. Baselines on the same gallery: chance; ridge CCA on mean-pooled features and the time-aligned
   linear model, both fitted on the checkpoint's training ids and tuned on its validation ids.
4. FAD against a real chance level; AV-Align with the video's duration.
"""
import hashlib
import sys
from pathlib import Path

import numpy as np

from feature_extraction.atomic import write_json
from vmnet.data import check_overlap, load_sequences, read_groups
from vmr import metrics as M
from vmr.baselines import tuned_aligned_linear, tuned_cca
from vmr.runs import check_provenance, random_weight_kinds


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_test_split(ckpt, test_data_dir, test_ids, what):
    """Steps 2 of the protocol: no training or validation id in the test ids; the same feature provenance."""
    check_overlap(list(ckpt.get("train_ids", [])) + list(ckpt.get("val_ids", [])), test_ids)
    return check_provenance(ckpt.get("provenance"), test_data_dir, what)


def score_blocks(v2m, m2v, groups, what, with_ranks=True):
    """Both directions from score matrices (rows = queries; ground truth = the same index or the same group)."""
    try:  # groups, not an (n, n) relevance matrix: gt_ranks builds it a chunk of rows at a time
        return {"video_to_music": M.recall_block(M.gt_ranks(v2m, groups=groups), with_ranks=with_ranks),
                "music_to_video": M.recall_block(M.gt_ranks(m2v, groups=groups), with_ranks=with_ranks)}
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


def baselines(ckpt, test_video, test_audio, groups, max_seconds):
    """Chance, tuned pooled CCA and the tuned time-aligned linear model on the test gallery.

    test_video / test_audio: per-second rows of the gallery items, in gallery order. The baselines are
    fitted on the checkpoint's training ids and tuned on its validation ids, read from its training folder;
    without validation ids (or training data) only chance is given, with the reason.
    """
    n = len(test_video)
    out = {"chance": M.chance_block(n), "cca": None, "aligned_linear": None}
    data_dir, train_ids, val_ids = ckpt.get("train_data_dir"), ckpt.get("train_ids"), ckpt.get("val_ids")
    if not (data_dir and Path(data_dir).is_dir() and train_ids and val_ids and len(val_ids) >= 2):
        out["skipped"] = "the checkpoint has no validation ids or its training folder is gone"
        print(f"baselines: {out['skipped']}; only chance is reported", file=sys.stderr)
        return out
    dims = (test_video[0].shape[1], test_audio[0].shape[1])
    _, tv, ta = load_sequences(data_dir, train_ids, max_seconds, dims, "baseline train features")
    _, vv, va = load_sequences(data_dir, val_ids, max_seconds, dims, "baseline validation features")
    pool = lambda rows: np.stack([r.mean(0) for r in rows])  # noqa: E731
    for name, fit, train, val, test in (
            ("cca", tuned_cca, (pool(tv), pool(ta)), (pool(vv), pool(va)), (pool(test_video), pool(test_audio))),
            ("aligned_linear", tuned_aligned_linear, (tv, ta), (vv, va), (test_video, test_audio))):
        model = fit(train, val)
        scores = model.score(*test)
        out[name] = {**score_blocks(scores, scores.T, groups, f"{name} baseline (test)", with_ranks=False),
                     **model.settings()}
    return out


def provenance_banner(prov):
    """A warning line when features came from random (test) weights, else None."""
    kinds = random_weight_kinds(prov)
    if kinds:
        return f"{' and '.join(kinds)} features were computed with RANDOM weights: the numbers say nothing about real music"
    return None


def top_tracks(scores, ids, k=5, shown=float):
    """Per query row, the k best gallery ids with their scores (stable order)."""
    order = M.top_k(scores, k)  # = the stable argsort's first k, a chunk of rows at a time
    return [[{"id": ids[j], "score": shown(scores[i, j])} for j in row] for i, row in enumerate(order)]


def groups_of(groups_csv, ids):
    if not groups_csv:
        return None
    table = read_groups(groups_csv)
    return [table.get(vid, vid) for vid in ids]


def zeroshot_folders(test_data_dir, ids, clip_dir=None, wav2clip_dir=None):
    """(clip rows folder, wav2clip rows folder) for the zero-shot row, or None.

    Without flags: the `clip` and `wav2clip` folders beside the feature folders that DATA's symlinks point
    into (vmnet/prepare.py links DATA/video/<id>.npy to FEATURES/clip/<id>.npy), when they hold every id.
    """
    if not ids:
        return None
    features = Path(test_data_dir, "audio", f"{ids[0]}.npy").resolve().parent.parent
    clip_dir = Path(clip_dir or features / "clip")
    wav2clip_dir = Path(wav2clip_dir or features / "wav2clip")
    if all((clip_dir / f"{vid}.npy").is_file() and (wav2clip_dir / f"{vid}.npy").is_file() for vid in ids):
        return clip_dir, wav2clip_dir
    return None


def common_blocks(ckpt, test_data_dir, ids, video, audio, top1, groups, max_seconds, peaks_dir, fad_dir,
                  av_align_variant, seed, clip_dir, wav2clip_dir):
    """What every model's metrics.json holds besides its own rows: baselines, zero-shot, FAD, AV-Align."""
    out = {"baselines": baselines(ckpt, video, audio, groups, max_seconds)}
    folders = zeroshot_folders(test_data_dir, ids, clip_dir, wav2clip_dir)
    if folders:
        from zeroshot.evaluate import zeroshot_metrics

        out["baselines"]["zeroshot"] = zeroshot_metrics(*folders, ids, groups, with_ranks=False)
    elif wav2clip_dir:
        raise ValueError(f"--wav2clip_dir {wav2clip_dir}: no clip and wav2clip rows for every test id")
    prov = ckpt.get("provenance") or {}
    if fad_dir is None and "vggish" in str((prov.get("audio") or {}).get("model", "")).lower():
        fad_dir = Path(test_data_dir) / "audio"
        source = Path(test_data_dir) / "split.json"  # a split folder: the rows' files are in the folder it was written from
        if source.is_file():
            import json

            src = json.loads(source.read_text()).get("source")
            fad_dir = Path(src) / "audio" if src and (Path(src) / "audio").is_dir() else None
    out["fad"] = M.fad_report(fad_dir, ids, top1, ids, max_seconds) if fad_dir else None
    out["av_align"] = M.av_align_report(ids, top1, peaks_dir, av_align_variant, seed) if peaks_dir else None
    return out


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


def table(rows, ks=("R@1", "R@5", "R@10", "R@100", "MedR")):
    print(f"{'':28}" + "".join(f"{k:>9}" for k in ks))
    for name, block in rows:
        print(f"{name:28}" + "".join(f"{block[k]:9.3f}" if k != "MedR" else f"{block[k]:9.1f}" for k in ks))


def print_common(metrics):
    """Provenance warning, FAD and AV-Align lines shared by both models' summaries."""
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


def add_common_arguments(p):
    """Flags both models' test.py share."""
    p.add_argument("--test_data_dir", required=True, help="folder with video/<id>.npy and audio/<id>.npy")
    p.add_argument("--test_csv_path", required=True, help="CSV of test ids (the whole gallery)")
    p.add_argument("--out", default="metrics.json", help="metrics.json path; retrieval.json and <stem>_recall.png go beside it (default metrics.json)")
    p.add_argument("--groups", help="CSV with columns ID,group: ids sharing a group (the same track) all count as hits (default: none)")
    p.add_argument("--peaks_dir", help="av_peaks folder (video/<id>.npy, video/<id>.json, audio/<id>.npy) for AV-Align (default: none)")
    p.add_argument("--av_align_variant", choices=("2025", "2023"), default="2025",
                   help="2025: one-to-one matching (bounded by 1); 2023: a video peak may match several audio peaks (default 2025)")
    p.add_argument("--fad_dir", help="folder of per-second VGGish rows <id>.npy for FAD (default: the test audio folder when it is VGGish)")
    p.add_argument("--wav2clip_dir", help="wav2clip rows of the test tracks for the zero-shot row (default: the wav2clip folder "
                                          "beside the feature folder the test audio links point into, when it has every id)")
    p.add_argument("--clip_dir", help="clip rows of the test videos for the zero-shot row (default: the clip folder beside it)")
    p.add_argument("--max_seconds", type=int, help="use only the first N seconds (default: as in training)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch-1024 extra and the shuffled baselines (default 0)")
