"""The segment Transformer's scorer (vmr.scorer): validation, transformer/test.py and transformer/retrieve.py all
rank through it.

A track is cut at its own change points (vmr.segments, from the music alone: a library track has no video) and
encoded into one unit vector per second; a query video is cut at its flow segments (or, without them, where its
features change), the last one reaching its last second, and encoded the same way. Scores:
    pooled  = cosine of the renormalised means of the per-second vectors;
    aligned = mean over t < min(T_video, T_track) of cos(video(t), track(t)) (vmr.scorer.AlignedScoring), on each
              query's pooled top `rerank` candidates.
Both read the float16 per-second vectors an index stores, so a test split and a library of the same tracks
rank alike.
"""
import numpy as np
import torch

from transformer.data import covering, cut_parts, encode_timeline, split_parts, video_segments
from transformer.model import SegmentTransformer
from vmr.metrics import normalize_rows
from vmr.runs import sha256_file
from vmr.scorer import AlignedScoring, Scorer, pack_sequences, pooled_vectors, read_checkpoint
from vmr.search import search
from vmr.segments import music_segments

RERANK = 1000  # aligned candidates per query, in validation (every track), test and retrieval alike


@torch.no_grad()
def embed_sequences(encoder, sources, parts_of, batch_tracks=64):
    """List of (T_i, E) float32 per-second unit vectors of each source (T_i, D), encoded on its parts."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for first in range(0, len(sources), batch_tracks):
        chunk = list(sources[first:first + batch_tracks])
        length = max(len(s) for s in chunk)
        timeline = encode_timeline(encoder, cut_parts(chunk, parts_of[first:first + batch_tracks]), len(chunk), length, device)
        out += [timeline[i, :len(s)].numpy() for i, s in enumerate(chunk)]
    return out


def segment_vectors(seq, parts):
    """(P, E) renormalised means of per-second vectors over [start, end) parts."""
    return normalize_rows(np.stack([seq[s:e].mean(0) for s, e in parts]))


class TransformerScorer(AlignedScoring, Scorer):
    kind, name, flow_segments = "transformer", "Transformer", True

    def __init__(self, model, record, scoring=None, rerank=None):
        """model: a SegmentTransformer; record: its checkpoint dict (scoring resolved: "pooled" or "aligned")."""
        run_args, features = record["run_args"], record.get("features") or {}
        self.model = model.eval()
        self.scoring = scoring or record.get("scoring") or run_args["scoring"]
        if self.scoring not in ("pooled", "aligned"):
            raise ValueError(f"scoring must be pooled or aligned, not {self.scoring!r}")
        self.rerank = record.get("rerank", RERANK) if rerank is None else rerank
        self.video_dim, self.audio_dim = model.config["video_dim"], model.config["audio_dim"]
        self.video_features = (features.get("video") or "clip").split("+")
        self.audio_feature = features.get("audio") or "vggish"
        self.provenance = record.get("provenance")
        self.max_seconds = run_args.get("max_seconds")
        self.n_bkps, self.min_seconds, self.max_seq_len = run_args["n_bkps"], run_args["min_seconds"], model.config["max_seq_len"]

    def music_parts(self, rows):
        return split_parts(music_segments(rows, self.n_bkps, self.min_seconds), self.max_seq_len, len(rows))

    def video_parts(self, rows, boundaries=None):
        if boundaries is None:
            boundaries = video_segments(rows, self.n_bkps, self.min_seconds)[0]
        return split_parts(covering(boundaries, len(rows)), self.max_seq_len, len(rows))

    def embed_tracks(self, rows, paths=None, batch_tracks=64):
        seq, parts = [], []
        for first in range(0, len(rows), batch_tracks):  # a split folder's lazy rows: one chunk in memory
            chunk = [self.cut(r) for r in rows[first:first + batch_tracks]]
            chunk_parts = [self.music_parts(r) for r in chunk]
            seq += embed_sequences(self.model.audio, chunk, chunk_parts)
            parts += chunk_parts
        seg = np.concatenate(parts)
        return {"pooled": pooled_vectors(seq), **pack_sequences(seq),
                "seg_track": np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]).astype(np.int32),
                "seg_start": seg[:, 0].astype(np.int32), "seg_end": seg[:, 1].astype(np.int32),
                "seg_emb": np.concatenate([segment_vectors(s, p) for s, p in zip(seq, parts)])}

    def embed_queries(self, rows, boundaries=None):
        videos = [self.cut(r) for r in rows]
        parts = [self.video_parts(v, None if boundaries is None else boundaries[i]) for i, v in enumerate(videos)]
        seq = embed_sequences(self.model.video, videos, parts)
        return {"pooled": pooled_vectors(seq), "seq": seq, "parts": parts}

    def segment_matches(self, queries, library, i, ids, index=None):
        """For each segment of query i, the library segment (cut from the music alone) with the highest cosine."""
        parts = queries["parts"][i]
        best, scores = search(library["seg_emb"], segment_vectors(queries["seq"][i], parts), 1, index)
        return [{"start": int(s), "end": int(e), "track": ids[library["seg_track"][j]], "track_start": int(library["seg_start"][j]),
                 "track_end": int(library["seg_end"][j]), "score": float(score)}
                for (s, e), j, score in zip(parts, best[:, 0], scores[:, 0]) if j >= 0]


def load(path, scoring=None, rerank=None):
    """(scorer, checkpoint dict) of a transformer/train.py checkpoint (best.pt or last.pt); scoring and rerank
    override the checkpoint's."""
    ckpt = read_checkpoint(path, "transformer")
    model = SegmentTransformer(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    scorer = TransformerScorer(model, ckpt, scoring, rerank)
    scorer.checkpoint_sha256 = sha256_file(path)
    return scorer, ckpt

