"""Segment Transformer: one encoder per modality maps a padded segment of per-second rows to a unit vector.

Unlike the original, pooling ignores padding (so extra padding never changes an embedding in
eval mode) and the embeddings are L2-normalised inside the model. A track's embedding is the
renormalised mean of its segment embeddings.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(length, dim):
    """(length, dim) fixed encoding: sin on even dims, cos on odd dims, base 10000."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class SegmentEncoder(nn.Module):
    """Input projection, sinusoidal positions, post-norm encoder layers, masked mean pooling, projection, L2."""

    def __init__(self, input_dim, embed_dim=32, num_heads=4, num_layers=4, ff_dim=2048, dropout=0.1, max_seq_len=200):
        super().__init__()
        self.input = nn.Linear(input_dim, embed_dim)
        self.register_buffer("positions", sinusoidal_positions(max_seq_len, embed_dim), persistent=False)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, ff_dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.output = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, pad):
        """x (S, L, D), pad (S, L) True = padding (each row keeps >= 1 position) -> (S, E) unit rows."""
        if x.shape[1] > len(self.positions):
            raise ValueError(f"segment of {x.shape[1]} rows exceeds max_seq_len {len(self.positions)}")
        h = self.input(x) + self.positions[: x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=pad)
        h = torch.where(pad.unsqueeze(-1), 0.0, h)
        pooled = h.sum(1) / (~pad).sum(1, keepdim=True)
        return F.normalize(self.output(pooled), dim=-1)


class SegmentTransformer(nn.Module):
    """The two encoders; `config` is everything needed to rebuild it from a checkpoint."""

    def __init__(self, video_dim, audio_dim, embed_dim=32, num_heads=4, num_layers=4, ff_dim=2048, dropout=0.1,
                 max_seq_len=200):
        super().__init__()
        self.config = dict(video_dim=video_dim, audio_dim=audio_dim, embed_dim=embed_dim, num_heads=num_heads,
                           num_layers=num_layers, ff_dim=ff_dim, dropout=dropout, max_seq_len=max_seq_len)
        shared = dict(embed_dim=embed_dim, num_heads=num_heads, num_layers=num_layers, ff_dim=ff_dim,
                      dropout=dropout, max_seq_len=max_seq_len)
        self.video = SegmentEncoder(video_dim, **shared)
        self.audio = SegmentEncoder(audio_dim, **shared)

    def forward(self, video, audio, pad):
        return self.video(video, pad), self.audio(audio, pad)


def track_embeddings(segment_emb, owner, n_tracks):
    """Renormalised mean of each track's segment embeddings: (M, E), (M,) -> (n_tracks, E)."""
    total = torch.zeros(n_tracks, segment_emb.shape[1], dtype=segment_emb.dtype)
    total.index_add_(0, torch.as_tensor(owner, dtype=torch.long), segment_emb)
    return F.normalize(total, dim=-1)


def load_model(checkpoint_path):
    """(model in eval mode, checkpoint dict) from a train.py checkpoint (loaded with weights_only=True)."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if checkpoint.get("model_type") != "transformer":
        raise ValueError(f"{checkpoint_path}: not a segment Transformer checkpoint")
    model = SegmentTransformer(**checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint
