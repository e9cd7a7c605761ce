"""Training losses: the VM-NET inter-modal hinge on segments, and the flow-rank triplets.

Fixes against the original: the hinge has its margin, the K hardest negatives are chosen per
anchor (not globally), negatives are only segments of other videos, triplets never use a video
as its own positive, and everything is averaged rather than summed.
"""
import torch
from torch import nn


def hinge_one_way(sim, other_video, margin, k):
    """Mean over anchors i and their k hardest allowed negatives j of max(0, m + D_ii - D_ij), D = -sim."""
    negatives = sim.masked_fill(~other_video, float("-inf"))
    k = min(k, int(other_video.sum(1).max()))
    if k == 0:
        return sim.new_zeros(())
    hardest, _ = negatives.topk(k, dim=1)
    valid = torch.isfinite(hardest)
    terms = torch.clamp(margin - sim.diagonal().unsqueeze(1) + hardest, min=0)
    return terms[valid].mean()


def intermodal_loss(video_emb, audio_emb, owner, margin=0.1, k=16):
    """VM-NET hinge in both directions between each video segment and its time-aligned music segment.

    video_emb, audio_emb (S, E) unit rows (row s of both = the same seconds); owner (S,) video index.
    Returns L(video -> music) + L(music -> video).
    """
    sim = video_emb @ audio_emb.T
    other_video = owner.unsqueeze(0) != owner.unsqueeze(1)
    return hinge_one_way(sim, other_video, margin, k) + hinge_one_way(sim.T, other_video, margin, k)


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


def flow_triplet_losses(video_emb, audio_emb, top, bottom, n_parents, margin=0.1, flow_k=16, generator=None):
    """(L_top, L_bottom): triplets (top_a, top_p, bottom_a) and (bottom_a, bottom_p, top_a).

    Each triplet is scored in the four combinations (V,V,V), (A,A,A), (V,A,V), (A,V,A) with
    TripletMarginLoss(margin, p=2); the four are summed and the result averaged over triplets.
    top, bottom (B,) global segment indices; only items with >= 2 parent segments take part.
    """
    a, p = sample_pairs(n_parents >= 2, flow_k, generator)
    if len(a) == 0:
        zero = video_emb.new_zeros(())
        return zero, zero
    triplet = nn.TripletMarginLoss(margin=margin, p=2)

    def four(anchor, positive, negative):
        return (triplet(video_emb[anchor], video_emb[positive], video_emb[negative])
                + triplet(audio_emb[anchor], audio_emb[positive], audio_emb[negative])
                + triplet(video_emb[anchor], audio_emb[positive], video_emb[negative])
                + triplet(audio_emb[anchor], video_emb[positive], audio_emb[negative]))

    return four(top[a], top[p], bottom[a]), four(bottom[a], bottom[p], top[a])
