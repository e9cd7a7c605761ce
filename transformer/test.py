r"""Evaluate a segment Transformer checkpoint on the whole test gallery (VM-NET's metrics.json schema), under
the protocol of the README's "Protocol".

    python transformer/test.py --checkpoint runs/transformer/best.pt --test_data_dir data/symmv \
        --test_csv_path data/symmv/test.csv --flow_ranks features/flow/ranks.csv \
        --peaks_dir features/av_peaks --out runs/transformer/metrics.json

Every test video (whole, cut at its flow segments) is ranked against every whole test track (cut from its own
music, vmr.segments) by the Transformer's scorer (transformer/scorer.py), exactly as transformer/retrieve.py
ranks a library of the same tracks. Track scores: pooled (cosine of track embeddings) and aligned (mean cosine
of the time-aligned per-second embeddings, on each query's pooled top --rerank); --scoring picks the headline
blocks, FAD, AV-Align and retrieval.json, and the pooled score is reported beside an aligned headline. Test ids
seen in training or validation, and test features of another provenance, are errors.
"""
import sys

from transformer.scorer import load
from vmr import evaluation


def main(argv=None):
    return evaluation.main(argv, __doc__, "best.pt or last.pt written by transformer/train.py", load, aligned=True)


if __name__ == "__main__":
    sys.exit(main())
