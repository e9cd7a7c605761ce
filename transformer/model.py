"""Segment Transformer: one encoder per modality turns each segment of per-second rows into per-second
embeddings that know their neighbours.

Video is cut at its flow segments and music at its own change points (vmr.segments), each encoded on its
own, and the outputs are laid back on the track's time axis: one unit vector per second per modality.
Two track scores follow from them (transformer/scorer.py): pooled = cosine of the renormalised means,
aligned = the mean cosine of the time-aligned vectors at the offset where the video fits the track best
(moment search; vmr.moments).

Inputs are standardised with the training split's mean and std (stored as buffers, so a checkpoint
carries them). Layers are pre-norm. Order enters only through the attention: each head adds
-slope * |i - j| to its logits (ALiBi, Press et al. 2022, with the slopes learned), so a head with a steep
slope averages a few neighbouring seconds, the temporal smoothing very noisy per-second features need.
There are no absolute positions: sinusoidal ones, counted from each segment's start, differ between a
video's flow segments and its music's own segments and cost validation recall (README, Transformer).
Padding never reaches an unpadded position (masked keys), so extra padding never changes an output in
eval mode.
"""
import torch
import torch.nn.functional as F
from torch import nn

from vmr.training import standard_deviation


class Block(nn.Module):
    """Pre-norm encoder layer: h + attention(norm(h)), then h + feed-forward(norm(h))."""

    def __init__(self, dim, num_heads, ff_dim, dropout):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))

    def forward(self, h, bias):
        """h (S, L, E); bias (S, H, L, L) added to the attention logits (-inf at padded keys)."""
        s, length, dim = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(s, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        h = h + F.dropout(self.out(a.transpose(1, 2).reshape(s, length, dim)), p, self.training)
        return h + F.dropout(self.ff(self.norm2(h)), p, self.training)


class SegmentEncoder(nn.Module):
    """Standardise, project, pre-norm layers with distance-biased attention, final norm and projection, temporal
    smoothing, L2 per second.

    The smoothing is a learned per-channel weighted average over the segment's seconds (width `smooth`, weights
    = softmax of learned logits, starting as a box average; 1 = none), renormalised over the seconds that exist,
    so a constant segment stays constant up to its edges: an edge shows nothing a score could match on. Per-second features are very noisy while the content they share changes over
    seconds, so averaging neighbours is most of what temporal context buys; as a fixed first guess it frees the
    attention layers to learn the rest, and it is what lets a model that starts at the time-aligned linear
    baseline (train.py --init linear) start above it. Padding is zeroed before it, so it never changes an output.
    """

    def __init__(self, input_dim, embed_dim=64, num_heads=4, num_layers=2, ff_dim=256, dropout=0.0, smooth=5):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.input = nn.Linear(input_dim, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        # per-head slope = softplus(raw_slopes), starting at ALiBi's geometric 2^-1 ... 2^-8
        self.raw_slopes = nn.Parameter(torch.log(torch.expm1(2.0 ** -torch.linspace(1, 8, num_heads))))
        self.norm = nn.LayerNorm(embed_dim)
        self.output = nn.Linear(embed_dim, embed_dim)
        if smooth < 1 or smooth % 2 == 0:
            raise ValueError(f"smooth must be an odd width >= 1, got {smooth}")
        self.smooth_logits = nn.Parameter(torch.zeros(embed_dim, 1, smooth))

    def attention_bias(self, pad):
        """(S, H, L, L): -slope_h * |i - j|, and -inf at padded keys."""
        t = torch.arange(pad.shape[1], device=pad.device, dtype=torch.float32)
        bias = -F.softplus(self.raw_slopes)[:, None, None] * (t[None, :] - t[:, None]).abs()
        return bias.unsqueeze(0).masked_fill(pad[:, None, None, :], float("-inf"))

    def forward(self, x, pad):
        """x (S, L, D), pad (S, L) True = padding (each row keeps >= 1 position) -> (S, L, E) unit rows."""
        h = self.input((x - self.mean) / self.std)
        bias = self.attention_bias(pad)
        for block in self.blocks:
            h = block(h, bias)
        return F.normalize(self.smoothed(self.output(self.norm(h)), pad), dim=-1)

    def smoothed(self, y, pad):
        """(S, L, E) weighted means over each second's neighbours within its segment (padding excluded)."""
        weights = torch.softmax(self.smooth_logits, dim=-1)  # (E, 1, K), positive, summing to 1
        width, channels = weights.shape[-1] // 2, weights.shape[0]
        valid = (~pad).unsqueeze(1).to(y.dtype)  # (S, 1, L)
        total = F.conv1d(y.transpose(1, 2) * valid, weights, padding=width, groups=channels)
        share = F.conv1d(valid.expand(-1, channels, -1), weights, padding=width, groups=channels)
        return (total / share.clamp_min(1e-6)).transpose(1, 2)


class SegmentTransformer(nn.Module):
    """The two encoders; `config` is everything needed to rebuild it from a checkpoint (max_seq_len: the part
    length segments were split to in training, which evaluation and retrieval reuse)."""

    def __init__(self, video_dim, audio_dim, embed_dim=64, num_heads=4, num_layers=2, ff_dim=256, dropout=0.0,
                 max_seq_len=200, smooth=5):
        super().__init__()
        self.config = dict(video_dim=video_dim, audio_dim=audio_dim, embed_dim=embed_dim, num_heads=num_heads,
                           num_layers=num_layers, ff_dim=ff_dim, dropout=dropout, max_seq_len=max_seq_len, smooth=smooth)
        shared = dict(embed_dim=embed_dim, num_heads=num_heads, num_layers=num_layers, ff_dim=ff_dim, dropout=dropout,
                      smooth=smooth)
        self.video = SegmentEncoder(video_dim, **shared)
        self.audio = SegmentEncoder(audio_dim, **shared)

    def set_input_stats(self, video_mean, video_std, audio_mean, audio_std):
        """Standardisation from the training split (float arrays); a unit that never varied (std 0) gets std 1 (vmr.training.standard_deviation)."""
        for encoder, mean, std in ((self.video, video_mean, video_std), (self.audio, audio_mean, audio_std)):
            encoder.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            encoder.std.copy_(standard_deviation(std))
