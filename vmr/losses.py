"""The ranking loss both models use: VM-NET's hinge over the k hardest negatives of each anchor."""
import torch
import torch.nn.functional as F


def ranking_loss(dist, margin, top_k):
    """Mean over anchors i (rows) and their K hardest negatives k of max(0, m + D_ii - D_ik).

    The mean runs over all B*K terms, as in the original; K is clipped to B - 1.
    """
    b = dist.shape[0]
    k = min(top_k, b - 1)
    if k < 1:
        return dist.sum() * 0.0
    positive = dist.diagonal().unsqueeze(1)
    negatives = dist.masked_fill(torch.eye(b, dtype=torch.bool, device=dist.device), float("inf"))
    hardest = torch.topk(negatives, k, dim=1, largest=False).values
    return F.relu(margin + positive - hardest).mean()
