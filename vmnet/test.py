r"""Evaluate a VM-NET checkpoint on the whole test gallery, under the protocol of the README's "Protocol".

    python vmnet/test.py --checkpoint runs/vmnet/best.pt --test_data_dir data/yt8m \
        --test_csv_path data/yt8m/test.csv --out runs/vmnet/metrics.json

Every test video is ranked against every whole test track by VM-NET's scorer (vmnet/scorer.py), exactly as
vmnet/retrieve.py ranks a library of the same tracks. Writes metrics.json (both directions, the batch-1024
extra, chance, tuned CCA and the time-aligned linear baseline, the zero-shot row when wav2clip music features
are given, FAD and AV-Align when their inputs exist, the feature provenance), retrieval.json (top-5 tracks per
query) and a recall@K PNG beside it.
"""
import sys

from vmnet.scorer import load
from vmr import evaluation


def main(argv=None):
    return evaluation.main(argv, __doc__, "best.pt or last.pt written by vmnet/train.py", load)


if __name__ == "__main__":
    sys.exit(main())
