"""Segment Transformer benchmarks: training throughput against the matmul FLOP bound, and whole-gallery
evaluation time against VM-NET's on the same gallery, in the same run.

- training: segments/s of full steps (both encoders forward, inter-modal and flow losses, backward,
  Adam) with the default model (embed 32, 4 heads, 4 layers, feed-forward 2048), CLIP-sized video
  (512) and VGGish audio (128), 16 videos x 8 segments of 30 s per batch; bound = measured matmul
  FLOP/s (bench_vmnet.matmul_flops_per_s) / FLOPs of one segment pair (3 x 2 x multiply-adds of
  every matmul, attention included);
- evaluation: a gallery of N random videos/tracks of 240 s cut into 8 segments: Transformer
  (embed every segment of both modalities, pooled whole-gallery ranks) vs VM-NET (embed the
  mean-pooled rows, whole-gallery ranks), plus the aligned rerank of the pooled top 100 per query.

Evaluation runs on CUDA when there is one (gallery 10000), else on the CPU with a gallery of 1000
(about 100 segment encodings per second on 2 cores would take half an hour at 10000).
Sizes: BENCH_TRANSFORMER_GALLERY, BENCH_TRANSFORMER_STEPS=3, BENCH_TRANSFORMER_RERANK_QUERIES=5.
"""
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transformer.data import Item, collate
from transformer.losses import flow_triplet_losses, intermodal_loss
from transformer.model import SegmentTransformer
from transformer.scoring import aligned_scores, embed_items, top_columns
from vmr.metrics import gt_ranks, normalize_rows
from vmnet.model import VMNet, embed_rows

VIDEO_DIM, AUDIO_DIM, SECONDS, SEGMENTS = 512, 128, 240, 8


def sibling(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_items(n, seed=0, seconds=SECONDS, segments=SEGMENTS):
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, seconds, segments + 1).astype(np.int64)
    return [Item(f"t{i}", rng.standard_normal((seconds, VIDEO_DIM), dtype=np.float32),
                 rng.standard_normal((seconds, AUDIO_DIM), dtype=np.float32), bounds[:-1], bounds[1:],
                 rng.permutation(segments) + 1, 0, segments - 1, segments) for i in range(n)]


def segment_flops(model, length):
    """FLOPs of one training step for one (video, audio) segment pair of `length` rows."""
    c = model.config
    e, f, layers = c["embed_dim"], c["ff_dim"], c["num_layers"]
    per_layer = length * (4 * e * e + 2 * e * f) + 2 * length * length * e
    macs = sum(length * d * e + layers * per_layer + e * e for d in (c["video_dim"], c["audio_dim"]))
    return 3 * 2 * macs


def training(device, steps, videos=16):
    torch.manual_seed(0)
    model = SegmentTransformer(VIDEO_DIM, AUDIO_DIM).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = collate(random_items(videos))
    video, audio, pad = batch.video.to(device), batch.audio.to(device), batch.pad.to(device)
    owner, top, bottom, parents = (t.to(device) for t in (batch.owner, batch.top, batch.bottom, batch.n_parents))
    generator = torch.Generator().manual_seed(0)

    def step():
        v, a = model(video, audio, pad)
        l_top, l_bottom = flow_triplet_losses(v, a, top, bottom, parents, generator=generator)
        loss = 0.33 * (intermodal_loss(v, a, owner) + l_top + l_bottom)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    segments_per_s = steps * len(owner) / (time.perf_counter() - began)
    peak = sibling("bench_vmnet").matmul_flops_per_s(device)
    flops = segment_flops(model, SECONDS // SEGMENTS)
    bound = peak / flops
    return {"device": str(device), "segments_per_batch": len(owner), "segment_seconds": SECONDS // SEGMENTS,
            "steps": steps, "segments_per_s": segments_per_s, "matmul_gflops": peak / 1e9, "flops_per_segment": flops,
            "bound_segments_per_s": bound, "fraction_of_bound": segments_per_s / bound}


def evaluation(device, n, rerank_queries, rerank=100):
    items = random_items(n, seed=1)
    torch.manual_seed(0)
    transformer = SegmentTransformer(VIDEO_DIM, AUDIO_DIM).to(device).eval()
    began = time.perf_counter()
    embedded = embed_items(transformer, items)
    embed_seconds = time.perf_counter() - began
    pooled = (embedded["video"] @ embedded["audio"].T).numpy()
    gt_ranks(pooled), gt_ranks(pooled.T)
    transformer_seconds = time.perf_counter() - began

    vmnet = VMNet(VIDEO_DIM, AUDIO_DIM).to(device).eval()
    began = time.perf_counter()
    video = np.stack([it.video.mean(0) for it in items])
    audio = np.stack([it.audio.mean(0) for it in items])

    def on_device(embed):
        return lambda x: embed(x.to(device)).cpu()

    scores = (normalize_rows(embed_rows(on_device(vmnet.embed_video), video))
              @ normalize_rows(embed_rows(on_device(vmnet.embed_music), audio)).T)
    gt_ranks(scores), gt_ranks(scores.T)
    vmnet_seconds = time.perf_counter() - began

    rerank = min(rerank, n)
    candidates = top_columns(pooled[:rerank_queries], rerank)
    pairs = np.stack([np.repeat(np.arange(rerank_queries), rerank), candidates.ravel()], 1)
    began = time.perf_counter()
    aligned_scores(transformer.audio, embedded["video_seg"], embedded["owner"], embedded["start"], embedded["end"],
                   [it.audio for it in items], pairs)
    rerank_seconds = (time.perf_counter() - began) / rerank_queries
    return {"device": str(device), "gallery": n, "segments_per_track": SEGMENTS, "track_seconds": SECONDS,
            "transformer_seconds": transformer_seconds, "transformer_embed_seconds": embed_seconds,
            "vmnet_seconds": vmnet_seconds, "transformer_over_vmnet": transformer_seconds / vmnet_seconds,
            "aligned_rerank_top": rerank, "aligned_rerank_seconds_per_query": rerank_seconds,
            "aligned_whole_gallery_seconds_estimate": rerank_seconds * n * n / rerank}


def run():
    cuda = torch.cuda.is_available()
    steps = int(os.environ.get("BENCH_TRANSFORMER_STEPS", "3"))
    gallery = int(os.environ.get("BENCH_TRANSFORMER_GALLERY", "10000" if cuda else "1000"))
    queries = int(os.environ.get("BENCH_TRANSFORMER_RERANK_QUERIES", "5"))
    result = {"training": [training(torch.device("cpu"), steps)]}
    if cuda:
        result["training"].append(training(torch.device("cuda"), steps * 10))
    result["evaluation"] = evaluation(torch.device("cuda" if cuda else "cpu"), gallery, queries)
    return result


if __name__ == "__main__":
    from feature_extraction.cli import benchmark_main

    sys.exit(benchmark_main(__doc__, run))
