"""Music retrieval for a new video with a trained segment Transformer (ranked by transformer/scorer.py, as
transformer/test.py ranks), down to the segment.

Build an index of a music library once; each track is cut where its music changes (no video needed) and
encoded into one vector per second:

    python transformer/retrieve.py --build_index --library music/ --checkpoint runs/transformer/best.pt --index INDEX.npz

Query with video files (features and flow segments extracted first) or video feature files (.npy, with their
segments from --flow_ranks, or cut where their features change):

    python transformer/retrieve.py --index INDEX.npz --checkpoint runs/transformer/best.pt --query clip.mp4 [--json] [--faiss hnsw]

The pooled track vectors find each query's top --rerank candidates, the checkpoint's scoring orders them, and
for each query segment the library segment with the highest cosine is shown with its start and end seconds.
"""
import sys

from transformer.scorer import load
from vmr import retrieval


def main(argv=None):
    return retrieval.main(argv, __doc__, "transformer", lambda args: load(args.checkpoint, rerank=args.rerank)[0])


if __name__ == "__main__":
    sys.exit(main())
