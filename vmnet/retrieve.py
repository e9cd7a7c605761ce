"""Music retrieval for a new video with a trained VM-NET (ranked by vmnet/scorer.py, as vmnet/test.py ranks).

Build an index of a music library once (feature files, a split folder, or music/video files whose VGGish
features are extracted on the fly):

    python vmnet/retrieve.py --build_index --library music/ --checkpoint runs/vmnet/best.pt --index INDEX.npz

Query with video files (their features are extracted first) or video feature files (.npy):

    python vmnet/retrieve.py --index INDEX.npz --checkpoint runs/vmnet/best.pt --query clip.mp4 [--json] [--faiss hnsw]
"""
import sys

from vmnet.scorer import load
from vmr import retrieval


def main(argv=None):
    return retrieval.main(argv, __doc__, "vmnet", lambda args: load(args.checkpoint)[0])


if __name__ == "__main__":
    sys.exit(main())
