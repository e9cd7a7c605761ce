"""Zero-shot Wav2CLIP rows for the whole-gallery evaluation: no training, the same protocol as the models.

    python zeroshot/evaluate.py --video features/clip --audio features/wav2clip --ids data/clip_vggish/test.csv

Video i is the mean of its unit `clip` rows, track i its whole-track Wav2CLIP embedding (--music rows:
the mean of its unit per-second rows); both use rows [0, min(T_video, T_audio)) as every consumer
does (the whole-track embedding covers the whole audio by construction). Scores are cosines, ranked
against the whole gallery with pessimistic ties (vmr.metrics).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from feature_extraction.atomic import write_json
from vmr.metrics import chance_block, retrieval_metrics
from zeroshot.embeddings import MUSIC, load_rows, mean_direction, music_vector


def zeroshot_metrics(test_clip_dir, test_wav2clip_dir, ids, groups=None, music="track", with_ranks=True):
    """{"video_to_music": block, "music_to_video": block} as vmr.metrics.retrieval_metrics returns them.

    test_clip_dir/<id>.npy: (T, 512) CLIP ViT-B/32 rows (`clip` or `clip_l2`); test_wav2clip_dir/<id>.npy:
    (T, 512) Wav2CLIP rows, with wav2clip_track/<id>.npy beside that folder (symlinks followed) unless
    music="rows". groups: optional (N,) labels; ids sharing a label all count as hits. Raises ValueError
    naming the file when one is missing or malformed.
    """
    video, tracks = [], []
    for vid in ids:
        paths = Path(test_clip_dir) / f"{vid}.npy", Path(test_wav2clip_dir) / f"{vid}.npy"
        try:
            v, m = load_rows(paths[0]), load_rows(paths[1])
        except (OSError, ValueError) as e:
            raise ValueError(f"{vid}: {e}") from None
        t = min(len(v), len(m))
        video.append(mean_direction(v[:t]))
        tracks.append(music_vector(paths[1], m[:t], music))
    return retrieval_metrics(np.stack(video), np.stack(tracks), groups, with_ranks)


def main(argv=None):
    from vmnet.data import read_groups, read_ids

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="folder of clip (or clip_l2) rows <id>.npy")
    p.add_argument("--audio", required=True, help="folder of wav2clip rows <id>.npy (wav2clip_track/ beside it)")
    p.add_argument("--ids", required=True, help="CSV of the gallery ids (header ID), e.g. a test.csv")
    p.add_argument("--groups", help="CSV with columns ID,group: ids sharing a group (the same track) all count "
                                    "as hits (default: none)")
    p.add_argument("--music", choices=MUSIC, default="track",
                   help="track vector: whole-track embedding (track, default) or mean of the unit rows (rows)")
    p.add_argument("--out", help="also write the metrics, with chance, to this JSON file (default: print only)")
    args = p.parse_args(argv)
    try:
        ids = read_ids(args.ids)
        table = read_groups(args.groups) if args.groups else None
        groups = [table.get(vid, vid) for vid in ids] if table else None
        metrics = zeroshot_metrics(args.video, args.audio, ids, groups, args.music)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    chance = chance_block(len(ids))
    ks = ("R@1", "R@5", "R@10", "R@100", "MedR")
    print(f"whole gallery N = {len(ids)}, zero-shot Wav2CLIP ({args.music} vectors)")
    print(f"{'':16}" + "".join(f"{k:>9}" for k in ks))
    for name, block in (("zero-shot v->m", metrics["video_to_music"]), ("zero-shot m->v", metrics["music_to_video"]),
                        ("chance", chance)):
        print(f"{name:16}" + "".join(f"{block[k]:9.3f}" if k != "MedR" else f"{block[k]:9.1f}" for k in ks))
    if args.out:
        write_json(Path(args.out), {"gallery": len(ids), "music": args.music, **metrics, "chance": chance})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
