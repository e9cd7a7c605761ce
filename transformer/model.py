"""Segment Transformer: one encoder per modality turns each segment of per-second rows into per-second
embeddings that know their neighbours.

Video is cut at its flow segments and music at its own change points (vmr.segments), each encoded on its
own, and the outputs are laid back on the track's time axis: one unit vector per second per modality.
Two track scores follow from them (transformer/scoring.py): pooled = cosine of the renormalised means,
aligned = mean over the common seconds of the cosine of the time-aligned vectors.

Inputs are standardised with the training split's mean and std (stored as buffers, so a checkpoint
carries them). Layers are pre-norm. Attention sees where a second is in two ways: sinusoidal positions
added to the input, and (distance_bias) a learned per-head penalty slope * |i - j| on the attention
logits (ALiBi, Press et al. 2022, with the slopes learned): a head with a steep slope averages a few
neighbouring seconds, which is the temporal smoothing per-second features need when their noise is
large. Padding never reaches an unpadded position (masked keys), so extra padding never changes an
output in eval mode.
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


class Block(nn.Module):
    """Pre-norm encoder layer: h + attention(norm(h)), then h + feed-forward(norm(h))."""

    def __init__(self, dim, num_heads, ff_dim, dropout):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))

    def forward(self, h, mask):
        """h (S, L, E); mask: additive float (S or 1, H or 1, L, L) or boolean (True = attend)."""
        s, length, dim = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(s, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        h = h + F.dropout(self.out(a.transpose(1, 2).reshape(s, length, dim)), p, self.training)
        return h + F.dropout(self.ff(self.norm2(h)), p, self.training)


class SegmentEncoder(nn.Module):
    """Standardise, project, add positions, pre-norm layers, final norm and projection, L2 per second."""

    def __init__(self, input_dim, embed_dim=64, num_heads=4, num_layers=2, ff_dim=256, dropout=0.1, max_seq_len=200,
                 distance_bias=True):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.input = nn.Linear(input_dim, embed_dim)
        self.register_buffer("positions", sinusoidal_positions(max_seq_len, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        # slope of head h = softplus(raw): initially 2^-1 ... 2^-8 as in ALiBi, then learned
        slopes = 2.0 ** -torch.linspace(1, 8, num_heads)
        self.raw_slopes = nn.Parameter(torch.log(torch.expm1(slopes))) if distance_bias else None
        self.norm = nn.LayerNorm(embed_dim)
        self.output = nn.Linear(embed_dim, embed_dim)

    def attention_mask(self, pad):
        keep = ~pad[:, None, None, :]  # (S, 1, 1, L)
        if self.raw_slopes is None:
            return keep
        t = torch.arange(pad.shape[1], device=pad.device, dtype=torch.float32)
        distance = (t[None, :] - t[:, None]).abs()
        bias = -F.softplus(self.raw_slopes)[:, None, None] * distance  # (H, L, L)
        return bias.unsqueeze(0).masked_fill(~keep, float("-inf"))

    def forward(self, x, pad):
        """x (S, L, D), pad (S, L) True = padding (each row keeps >= 1 position) -> (S, L, E) unit rows."""
        if x.shape[1] > len(self.positions):
            raise ValueError(f"segment of {x.shape[1]} rows exceeds max_seq_len {len(self.positions)}")
        h = self.input((x - self.mean) / self.std) + self.positions[: x.shape[1]]
        mask = self.attention_mask(pad)
        for block in self.blocks:
            h = block(h, mask)
        return F.normalize(self.output(self.norm(h)), dim=-1)


class SegmentTransformer(nn.Module):
    """The two encoders; `config` is everything needed to rebuild it from a checkpoint."""

    def __init__(self, video_dim, audio_dim, embed_dim=64, num_heads=4, num_layers=2, ff_dim=256, dropout=0.1,
                 max_seq_len=200, distance_bias=True):
        super().__init__()
        self.config = dict(video_dim=video_dim, audio_dim=audio_dim, embed_dim=embed_dim, num_heads=num_heads,
                           num_layers=num_layers, ff_dim=ff_dim, dropout=dropout, max_seq_len=max_seq_len,
                           distance_bias=distance_bias)
        shared = dict(embed_dim=embed_dim, num_heads=num_heads, num_layers=num_layers, ff_dim=ff_dim,
                      dropout=dropout, max_seq_len=max_seq_len, distance_bias=distance_bias)
        self.video = SegmentEncoder(video_dim, **shared)
        self.audio = SegmentEncoder(audio_dim, **shared)

    def set_input_stats(self, video_mean, video_std, audio_mean, audio_std):
        """Standardisation from the training split (float arrays); a zero std becomes 1."""
        for encoder, mean, std in ((self.video, video_mean, video_std), (self.audio, audio_mean, audio_std)):
            encoder.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            encoder.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))


def load_model(checkpoint_path):
    """(model in eval mode, checkpoint dict) from a train.py checkpoint (loaded with weights_only=True)."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if checkpoint.get("model_type") != "transformer":
        raise ValueError(f"{checkpoint_path}: not a segment Transformer checkpoint")
    model = SegmentTransformer(**checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint
