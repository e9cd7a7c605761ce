"""VM-NET (Hong, Im, Yang 2018): two fully connected branches into one 512-d unit sphere.

Music branch (3 layers): FC2048-BN-ReLU-Dropout, FC1024-ReLU-Dropout, FC512-BN, L2.
Video branch (2 layers): FC2048-BN-ReLU-Dropout, FC512-BN, L2. Each extra layer adds
FC1024-ReLU-Dropout before the last one. Weights He truncated-normal (std sqrt(2/fan_in),
cut at 2 std as TF's truncated_normal), biases 0. BatchNorm eps 1e-3 and momentum 0.01
(PyTorch's convention for TF's decay 0.99). Inputs are standardised with the training split's mean
and std, held as buffers so that a checkpoint carries them (identity until set_input_stats).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from vmr.training import standard_deviation


def linear(n_in, n_out):
    layer = nn.Linear(n_in, n_out)
    std = math.sqrt(2.0 / n_in)
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)
    return layer


def batch_norm(n):
    return nn.BatchNorm1d(n, eps=1e-3, momentum=0.01)


def branch(in_dim, num_layers, embed_dim=512, first=2048, hidden=1024, dropout=0.1):
    """FC(first)-BN-ReLU-Dropout, (num_layers - 2) x FC(hidden)-ReLU-Dropout, FC(embed_dim)-BN."""
    if num_layers < 2:
        raise ValueError(f"a branch needs at least 2 layers, got {num_layers}")
    layers = [linear(in_dim, first), batch_norm(first), nn.ReLU(), nn.Dropout(dropout)]
    width = first
    for _ in range(num_layers - 2):
        layers += [linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers += [linear(width, embed_dim), batch_norm(embed_dim)]
    return nn.Sequential(*layers)


class VMNet(nn.Module):
    def __init__(self, video_dim, audio_dim, num_layers_video=2, num_layers_music=3, embed_dim=512, dropout=0.1):
        super().__init__()
        self.video = branch(video_dim, num_layers_video, embed_dim, dropout=dropout)
        self.music = branch(audio_dim, num_layers_music, embed_dim, dropout=dropout)
        for name, dim in (("video", video_dim), ("audio", audio_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def set_input_stats(self, video_mean, video_std, audio_mean, audio_std):
        """Standardisation from the training split; a unit that never varied (std 0) gets std 1 (vmr.training.standard_deviation)."""
        for name, mean, std in (("video", video_mean, video_std), ("audio", audio_mean, audio_std)):
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
            getattr(self, f"{name}_std").copy_(standard_deviation(std))

    def embed_video(self, video):
        return F.normalize(self.video((video - self.video_mean) / self.video_std), dim=1)

    def embed_music(self, audio):
        return F.normalize(self.music((audio - self.audio_mean) / self.audio_std), dim=1)

    def forward(self, video, audio):
        return self.embed_video(video), self.embed_music(audio)


def model_from_checkpoint(ckpt):
    """Rebuild a VMNet in eval mode from a checkpoint dict written by vmnet/train.py."""
    cfg = ckpt["config"]
    model = VMNet(cfg["video_dim"], cfg["audio_dim"], cfg["num_layers_video"], cfg["num_layers_music"], cfg["embed_dim"], cfg["dropout"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


@torch.no_grad()
def embed_rows(embed, rows, batch=4096, device="cpu"):
    """Apply an embedding function to (n, D) numpy rows in batches on `device` -> (n, E) float32 numpy."""
    out = [embed(torch.as_tensor(rows[i:i + batch], dtype=torch.float32, device=device)).cpu() for i in range(0, len(rows), batch)]
    return torch.cat(out).numpy()


@torch.no_grad()
def init_from_cca(model, proj_video, proj_audio, video_rows, audio_rows, rest_scale=0.1):
    """Start VM-NET at a linear CCA solution, so training refines the linear model instead of rediscovering it.

    proj_video (Dv, k), proj_audio (Da, k): canonical directions for the raw inputs (vmr.baselines.CCA).
    The first layer's units 0..k-1 get the directions and units k..2k-1 their negatives, so after
    BN-ReLU they hold relu(u) and relu(-u) of the standardised canonical variates u; a middle layer passes
    both halves on unchanged, and the last layer's output j < k reads relu(u_j) - relu(-u_j) = u_j. The last
    BN's scale is 1 on those k outputs and rest_scale on the others, whose rows keep their random start: the
    embedding starts as the k canonical variates with equal weight (the tuned CCA baseline) and every other
    unit is free to learn. BN running statistics are set from video_rows / audio_rows (the training rows).
    """
    for branch, proj, std in ((model.video, proj_video, model.video_std), (model.music, proj_audio, model.audio_std)):
        linears = [m for m in branch if isinstance(m, nn.Linear)]
        k = proj.shape[1]
        if 2 * k > min(m.out_features for m in linears[:-1]) or k > linears[-1].out_features:
            raise ValueError(f"{k} CCA directions do not fit layers of {[m.out_features for m in linears]} units")
        w = torch.as_tensor(proj, dtype=torch.float32).T * std  # directions on the standardised inputs
        eye = torch.eye(k)
        first = linears[0]
        first.weight[:k], first.weight[k:2 * k], first.bias[:2 * k] = w, -w, 0
        for layer in linears[1:]:
            rows = slice(0, 2 * k) if layer is not linears[-1] else slice(0, k)
            layer.weight[rows], layer.bias[rows] = 0, 0
            layer.weight[:k, :k], layer.weight[:k, k:2 * k] = eye, -eye
            if layer is not linears[-1]:
                layer.weight[k:2 * k, :k], layer.weight[k:2 * k, k:2 * k] = -eye, eye
        last_norm = [m for m in branch if isinstance(m, nn.BatchNorm1d)][-1]
        last_norm.weight.fill_(rest_scale)
        last_norm.weight[:k] = 1.0
        last_norm.bias.zero_()
    calibrate_batch_norm(model, video_rows, audio_rows)


@torch.no_grad()
def calibrate_batch_norm(model, video_rows, audio_rows):
    """Set every BN layer's running mean and variance to the statistics of the given rows (one pass, no dropout)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    momenta, was_training = [m.momentum for m in norms], model.training
    model.eval()  # dropout off
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one pass, that pass's statistics
        m.train()
    model(torch.as_tensor(video_rows, dtype=torch.float32), torch.as_tensor(audio_rows, dtype=torch.float32))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
