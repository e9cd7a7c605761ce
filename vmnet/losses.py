"""VM-NET losses on a batch of paired unit embeddings X (music) and Y (video).

D = -X Y^T is the distance matrix; pair i is the positive of anchor i, everything else a negative.
"""
import torch
import torch.nn.functional as F

from vmr.losses import ranking_loss


def structure_loss(inputs, emb):
    """Soft intra-modal structure loss over the whole batch.

    Dl = -F F^T on row-normalised inputs, De = -E E^T; for every row i and neighbouring
    columns j, j+1: c_ij = sgn(Dl_ij - Dl_i,j+1) - sgn(De_ij - De_i,j+1), and the loss is the
    mean of c_ij (De_i,j+1 - De_ij): it pushes the embedding to keep the input's order.
    """
    f = F.normalize(inputs, dim=1)
    dl = -f @ f.T
    de = -emb @ emb.T
    c = (torch.sign(dl[:, :-1] - dl[:, 1:]) - torch.sign(de[:, :-1] - de[:, 1:])).detach()
    return (c * (de[:, 1:] - de[:, :-1])).mean()


def vmnet_loss(music_in, video_in, music_emb, video_emb, margin=0.1, top_k=100, weights=(3.0, 1.0, 0.2, 0.2)):
    """Total = w_xy L_xy + w_yx L_yx + w_x L_x + w_y L_y; returns (total, dict of the parts)."""
    dist = -music_emb @ video_emb.T
    parts = {
        "xy": ranking_loss(dist, margin, top_k),
        "yx": ranking_loss(dist.T, margin, top_k),
        "x": structure_loss(music_in, music_emb),
        "y": structure_loss(video_in, video_emb),
    }
    total = sum(w * parts[name] for w, name in zip(weights, ("xy", "yx", "x", "y")))
    return total, parts
