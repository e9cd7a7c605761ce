"""Training losses on the per-second embeddings of a batch of B items laid on their time axes (B, T, E).

Inter-modal: item i's video against every item's music (each item's music is its video's moment, so the
aligned score has one offset, the one moment search finds for a positive; see scorer.py), by temperature-scaled InfoNCE (default) or VM-NET's hinge over the k hardest negatives. All
music in a batch is cut at its own change points, never at the anchor's video boundaries, so no score
can tell the positive by its segment lengths.

Flow-rank triplets (kept from the original): for items a != p with >= 2 flow segments, (top_a, top_p,
bottom_a) and (bottom_a, bottom_p, top_a), each in the four combinations (V,V,V), (A,A,A), (V,A,V), (A,V,A),
TripletMarginLoss(margin, p=2) on segment embeddings = renormalised means of a modality's per-second
embeddings over the segment's seconds.
"""
import torch
import torch.nn.functional as F
from torch import nn

from vmr.losses import ranking_loss


def aligned_matrix(video, audio, lengths):
    """(B, B): mean over the common seconds of cos(video_i(t), audio_j(t)); rows past an item's end are zero."""
    b = len(video)
    total = video.reshape(b, -1) @ audio.reshape(b, -1).T
    return total / torch.minimum(lengths.unsqueeze(1), lengths.unsqueeze(0)).clamp_min(1)


def pooled(timeline, lengths):
    """(B, E) renormalised mean of each item's per-second embeddings."""
    return F.normalize(timeline.sum(1) / lengths.unsqueeze(1).clamp_min(1), dim=-1)


def pairing_loss(scores, kind="infonce", temperature=0.05, margin=0.1, top_k=16):
    """Both directions of a (B, B) score matrix with the positives on the diagonal."""
    if kind == "infonce":
        labels = torch.arange(len(scores))
        return (F.cross_entropy(scores / temperature, labels) + F.cross_entropy(scores.T / temperature, labels)) / 2
    return (ranking_loss(-scores, margin, top_k) + ranking_loss(-scores.T, margin, top_k)) / 2


def second_loss(video, audio, lengths, temperature=0.05):
    """Per-second InfoNCE: at every second t, each item's video(t) against the music(t) of every item of the
    batch that lasts past t (and the reverse), positives on the diagonal; mean over all (item, second) terms.

    video, audio (B, T, E) unit rows laid on the time axis, lengths (B,). A batch of B items of T seconds
    gives about B * T contrastive terms instead of B, so the encoders learn which directions of the
    per-second features the two modalities share far faster than from whole-track scores alone.
    """
    t = torch.arange(video.shape[1])
    alive = t.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    logits = torch.einsum("itd,jtd->tij", video, audio) / temperature  # (T, B, B)
    both = alive.T.unsqueeze(2) & alive.T.unsqueeze(1)  # (T, B, B): both items last past t
    logits = logits.masked_fill(~both, float("-inf"))  # an item that has ended is no candidate, either way
    labels = torch.arange(len(video)).expand(len(t), -1)
    rows = alive.T  # (T, B): terms with a positive
    v2m = F.cross_entropy(logits[rows], labels[rows])
    m2v = F.cross_entropy(logits.transpose(1, 2)[rows], labels[rows])
    return (v2m + m2v) / 2


def segment_mean(timeline, spans):
    """(B, E) renormalised mean of timeline[i, start_i:end_i]."""
    t = torch.arange(timeline.shape[1])
    inside = (t.unsqueeze(0) >= spans[:, :1]) & (t.unsqueeze(0) < spans[:, 1:])
    return F.normalize((timeline * inside.unsqueeze(-1)).sum(1), dim=-1)


def sample_pairs(eligible, flow_k, generator):
    """Up to flow_k ordered pairs (a, p) of distinct eligible items, sampled without replacement."""
    index = torch.nonzero(eligible).flatten()
    a, p = torch.meshgrid(index, index, indexing="ij")
    keep = a != p
    a, p = a[keep], p[keep]
    if len(a) > flow_k:
        chosen = torch.randperm(len(a), generator=generator)[:flow_k]
        a, p = a[chosen], p[chosen]
    return a, p


def flow_triplet_losses(video, audio, top, bottom, n_segments, margin=0.1, flow_k=16, generator=None):
    """(L_top, L_bottom) from timelines (B, T, E) and each item's top / bottom spans (B, 2)."""
    a, p = sample_pairs(n_segments >= 2, flow_k, generator)
    if len(a) == 0:
        zero = video.new_zeros(())
        return zero, zero
    seg = {("v", "top"): segment_mean(video, top), ("a", "top"): segment_mean(audio, top),
           ("v", "bottom"): segment_mean(video, bottom), ("a", "bottom"): segment_mean(audio, bottom)}
    triplet = nn.TripletMarginLoss(margin=margin, p=2)

    def four(pos, neg):
        total = 0.0
        for m1, m2, m3 in (("v", "v", "v"), ("a", "a", "a"), ("v", "a", "v"), ("a", "v", "a")):
            total = total + triplet(seg[(m1, pos)][a], seg[(m2, pos)][p], seg[(m3, neg)][a])
        return total

    return four("top", "bottom"), four("bottom", "top")
