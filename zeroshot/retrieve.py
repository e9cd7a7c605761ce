"""Zero-shot music retrieval for a video with Wav2CLIP: no training and no paired data (ranked by
vmr.zeroshot.ZeroShotScorer, as the zero-shot row of every evaluation).

Wav2CLIP embeds audio in the image-embedding space of OpenAI CLIP ViT-B/32, the encoder of our `clip` feature,
so a music library's Wav2CLIP features can be compared directly with a video's CLIP rows:

    python zeroshot/retrieve.py --build_index --library music/ --index ZEROSHOT_INDEX.npz
    python zeroshot/retrieve.py --index ZEROSHOT_INDEX.npz --query clip.mp4 [--top_k 5] [--json]

Track score: the cosine of the video vector (mean of its unit CLIP rows) and the track vector (its whole-track
Wav2CLIP embedding; --music rows: the mean of its unit per-second rows). For each second of the query, the
library second whose Wav2CLIP row has the highest cosine with that CLIP row.
"""
import sys

from vmr import retrieval
from vmr.zeroshot import ZeroShotScorer


def main(argv=None):
    return retrieval.main(argv, __doc__, "zeroshot", lambda args: ZeroShotScorer(args.music))


if __name__ == "__main__":
    sys.exit(main())
