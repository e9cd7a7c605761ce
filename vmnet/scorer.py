"""VM-NET's scorer (vmr.scorer): a video and a whole track are each mean-pooled over their seconds, embedded by
their branch, and ranked by cosine; the moment is the window of the video's length whose embedding is closest to
the video's. Validation, vmnet/test.py and vmnet/retrieve.py all rank through it."""
import numpy as np

from vmnet.model import embed_rows, model_from_checkpoint
from vmr.metrics import check_finite
from vmr.runs import sha256_file
from vmr.moments import window_means
from vmr.scorer import Scorer, pack_sequences, read_checkpoint, track_sequence


class VMNetScorer(Scorer):
    kind, name, scoring = "vmnet", "VM-NET", "pooled"

    def __init__(self, model, record, device="cpu"):
        """model: a VMNet; record: its checkpoint dict (or the record train.py is about to save)."""
        self.model, self.device = model.eval(), device
        cfg, features = record["config"], record.get("features") or {}
        self.video_dim, self.audio_dim = cfg["video_dim"], cfg["audio_dim"]
        self.video_features = (features.get("video") or "clip").split("+")
        self.audio_feature = features.get("audio") or "vggish"
        self.provenance = record.get("provenance")
        self.max_seconds = record["args"].get("max_seconds")

    def _pooled(self, rows):
        return np.stack([self.cut(r).mean(0) for r in rows])

    def embed_tracks(self, rows, paths=None):
        """Pooled track embeddings, and the tracks' rows (float16) for the moment: the window of the video's length
        whose embedding is closest to the video's."""
        self.model.eval()
        return {"pooled": check_finite(embed_rows(self.model.embed_music, self._pooled(rows), device=self.device),
                                       "VM-NET: music embeddings"), **pack_sequences([self.cut(r) for r in rows], "rows")}

    def window_vectors(self, library, j, length):
        return embed_rows(self.model.embed_music, window_means(track_sequence(library, j, "rows"), length), device=self.device)

    def embed_queries(self, rows, boundaries=None):
        self.model.eval()
        return {"pooled": check_finite(embed_rows(self.model.embed_video, self._pooled(rows), device=self.device),
                                       "VM-NET: video embeddings")}


def load(path):
    """(scorer, checkpoint dict) of a vmnet/train.py checkpoint (best.pt or last.pt)."""
    ckpt = read_checkpoint(path, "vmnet")
    scorer = VMNetScorer(model_from_checkpoint(ckpt), ckpt)
    scorer.checkpoint_sha256 = sha256_file(path)
    return scorer, ckpt
