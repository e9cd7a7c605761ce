"""Zero-shot Wav2CLIP rows for the whole-gallery evaluation: no training, the same protocol as the models.

    python zeroshot/evaluate.py --video features/clip --audio features/wav2clip --ids data/clip_vggish/test.csv

Video i is the mean of its unit `clip` rows, track i its whole-track Wav2CLIP embedding (--music rows:
the mean of its unit per-second rows), both whole, ranked by vmr.zeroshot.ZeroShotScorer (the ranking
zeroshot/retrieve.py gives) against the whole gallery with pessimistic ties (vmr.metrics).
"""
import argparse
import sys
from pathlib import Path

from feature_extraction.atomic import write_json
from vmr.data import read_groups, read_ids
from vmr.evaluation import zeroshot_block
from vmr.metrics import chance_block
from vmr.zeroshot import MUSIC


def main(argv=None):
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
        metrics = zeroshot_block(args.video, args.audio, ids, groups, args.music)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    chance = chance_block(len(ids), groups)
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
