"""Train the segment Transformer on fixed feature folders and flow segments.

    python transformer/train.py --train_data_dir DATA --train_csv_path DATA/train.csv \
        --test_csv_path DATA/test.csv --flow_ranks features/flow/ranks.csv --save_dir runs/transformer

Only ids of the train CSV are used; any id that is also in the test CSV is an error. A seeded
--val_fraction of them selects best.pt (validation recall, pooled scoring); the test CSV is never
used for selection. Every epoch writes last.pt atomically (plain dicts, loadable with
torch.load(weights_only=True)); --resume continues from it and ends where an uninterrupted run ends.
"""
import argparse
import csv
import io
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from feature_extraction.atomic import write_text
from transformer.data import collate, load_items, training_ids
from transformer.losses import flow_triplet_losses, intermodal_loss
from transformer.model import SegmentTransformer
from transformer.scoring import embed_items
from vmnet.metrics import retrieval_metrics
from vmnet.test import feature_names
from vmnet.train import is_better, plain_args, plot_log, save_checkpoint, split_validation

LOG_COLUMNS = ["epoch", "train_loss", "val_R@1", "val_R@10", "val_MedR", "seconds", "inter_loss", "top_loss", "bottom_loss"]
# flags that define the run; the rest (paths to outputs, epochs, resume) may change on --resume
RUN_FLAGS = ["embed_dim", "num_heads", "num_layers", "ff_dim", "dropout", "max_seq_len", "batch_size", "lr", "margin",
             "top_k", "flow_margin", "flow_k", "lambda1", "lambda2", "lambda3", "val_fraction", "seed", "max_seconds"]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train_data_dir", required=True, help="folder with video/<id>.npy (T, Dv) and audio/<id>.npy (T, Da)")
    data.add_argument("--train_csv_path", required=True, help="CSV of training ids (header ID, or headerless <id>.npy lines)")
    data.add_argument("--test_csv_path", default=None, help="test ids: an overlap with the train CSV is an error; evaluated once after "
                      "training (metrics.json in SAVE_DIR), never used for selection")
    data.add_argument("--test_data_dir", default=None, help="folder of the test features (default: --train_data_dir)")
    data.add_argument("--flow_ranks", default=None, help="flowProcessor's ranks.csv (ours or the original format)")
    data.add_argument("--segments_from", choices=["ranks", "features"], default="ranks",
                      help="ranks: ids missing from ranks.csv are skipped with a warning; features: they (or all ids, "
                           "without --flow_ranks) are cut where the video features change (default ranks)")
    data.add_argument("--n_bkps", type=int, default=7, help="breakpoints for --segments_from features (default 7, as flowProcessor)")
    data.add_argument("--min_seconds", type=int, default=10, help="shortest segment for --segments_from features (default 10)")
    data.add_argument("--max_seq_len", type=int, default=200, help="longer segments are split into parts with the parent's rank (default 200 s, original)")
    data.add_argument("--max_seconds", type=int, default=None, help="use only the first N seconds of each item")
    model = p.add_argument_group("model (defaults as the original trained it)")
    model.add_argument("--embed_dim", type=int, default=32, help="encoder width and embedding size (default 32)")
    model.add_argument("--num_heads", type=int, default=4, help="attention heads (default 4)")
    model.add_argument("--num_layers", type=int, default=4, help="encoder layers per modality (default 4)")
    model.add_argument("--ff_dim", type=int, default=2048, help="feed-forward width (default 2048, PyTorch's default)")
    model.add_argument("--dropout", type=float, default=0.1, help="dropout (default 0.1)")
    loss = p.add_argument_group("losses")
    loss.add_argument("--margin", type=float, default=0.1, help="inter-modal hinge margin (default 0.1, VM-NET)")
    loss.add_argument("--top_k", type=int, default=16, help="hardest negatives per anchor, from other videos only (default 16, original)")
    loss.add_argument("--flow_margin", type=float, default=0.1, help="TripletMarginLoss margin of the flow-rank triplets (default 0.1, original)")
    loss.add_argument("--flow_k", type=int, default=16, help="flow-rank triplets sampled per batch and kind (default 16, original)")
    loss.add_argument("--lambda1", type=float, default=0.33, help="weight of the inter-modal loss (default 0.33, original)")
    loss.add_argument("--lambda2", type=float, default=0.33, help="weight of the top triplets (default 0.33, original)")
    loss.add_argument("--lambda3", type=float, default=0.33, help="weight of the bottom triplets (default 0.33, original)")
    train = p.add_argument_group("training")
    train.add_argument("--save_dir", default="runs/transformer", help="checkpoints, train_log.csv and train_log.png (default runs/transformer)")
    train.add_argument("--epochs", type=int, default=100, help="epochs (default 100)")
    train.add_argument("--batch_size", type=int, default=128, help="videos per batch, all their segments together (default 128, original)")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, original)")
    train.add_argument("--val_fraction", type=float, default=0.1, help="seeded share of the train ids that selects best.pt (default 0.1; 0 = best is last)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation, shuffling, dropout and triplet sampling (default 0)")
    train.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--resume", action="store_true", help="continue from SAVE_DIR/last.pt")
    return p


class NonFiniteLoss(RuntimeError):
    pass


def train_epoch(model, items, optimizer, args, generator, device, epoch):
    """One pass over the items in a seeded order; returns mean losses {total, inter, top, bottom}."""
    model.train()
    order = torch.randperm(len(items), generator=generator).tolist()
    sums = dict(total=0.0, inter=0.0, top=0.0, bottom=0.0)
    steps = 0
    bar = tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch}", unit="batch", leave=False)
    for step, start in enumerate(bar):
        batch = collate([items[i] for i in order[start:start + args.batch_size]])
        video, audio = model(batch.video.to(device), batch.audio.to(device), batch.pad.to(device))
        video, audio = video.cpu(), audio.cpu()
        inter = intermodal_loss(video, audio, batch.owner, args.margin, args.top_k)
        top, bottom = flow_triplet_losses(video, audio, batch.top, batch.bottom, batch.n_parents,
                                          args.flow_margin, args.flow_k, generator)
        loss = args.lambda1 * inter + args.lambda2 * top + args.lambda3 * bottom
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"epoch {epoch} batch {step}: loss is {loss.item()} "
                                f"(inter {inter.item()}, top {top.item()}, bottom {bottom.item()})")
        if not loss.requires_grad:  # a batch of one video has no negatives and no triplets
            continue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for key, value in zip(sums, (loss, inter, top, bottom)):
            sums[key] += float(value.detach())
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return {key: value / max(steps, 1) for key, value in sums.items()}


def validate(model, items):
    """Whole validation gallery, pooled scoring (tracks cut at their own video's boundaries), video -> music."""
    embedded = embed_items(model, items)
    return retrieval_metrics(embedded["video"].numpy(), embedded["audio"].numpy(), with_ranks=False)["video_to_music"]


def write_log(save_dir, rows):
    """train_log.csv and train_log.png (loss and validation recall per epoch, drawn by vmnet.train.plot_log)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(save_dir) / "train_log.csv", buffer.getvalue())
    plot_log(rows, Path(save_dir) / "train_log.png")


def run(args):
    save_dir = Path(args.save_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    ids = training_ids(args.train_csv_path, args.test_csv_path)
    train_ids, val_ids = split_validation(ids, args.val_fraction, args.seed)
    load = dict(flow_ranks=args.flow_ranks, segments_from=args.segments_from, max_seq_len=args.max_seq_len,
                max_seconds=args.max_seconds, n_bkps=args.n_bkps, min_seconds=args.min_seconds)
    train_items = load_items(args.train_data_dir, train_ids, **load)
    val_items = load_items(args.train_data_dir, val_ids, **load) if val_ids else []
    video_dim, audio_dim = train_items[0].video.shape[1], train_items[0].audio.shape[1]
    n_segments = sum(len(it.starts) for it in train_items)
    if len(train_items) < 2:
        raise ValueError(f"{args.train_csv_path}: need at least 2 usable training videos, got {len(train_items)}")
    print(f"{len(train_items)} training videos ({n_segments} segments), {len(val_items)} validation videos", file=sys.stderr)

    torch.manual_seed(args.seed)
    model = SegmentTransformer(video_dim, audio_dim, args.embed_dim, args.num_heads, args.num_layers, args.ff_dim,
                               args.dropout, args.max_seq_len).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    rows, best, first_epoch = [], None, 1
    run_args = {key: getattr(args, key) for key in RUN_FLAGS}
    if args.resume and (save_dir / "last.pt").is_file():
        state = torch.load(save_dir / "last.pt", map_location="cpu", weights_only=True)
        changed = {k: (state["run_args"].get(k), v) for k, v in run_args.items() if state["run_args"].get(k) != v}
        if changed:
            raise ValueError(f"{save_dir / 'last.pt'}: cannot resume with different settings (saved, now): {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        generator.set_state(state["generator"])
        rows, best, first_epoch = state["log"], state["best"], state["epoch"] + 1
        print(f"resuming after epoch {state['epoch']}", file=sys.stderr)

    save_dir.mkdir(parents=True, exist_ok=True)
    last = save_dir / "last.pt"
    for epoch in range(first_epoch, args.epochs + 1):
        began = time.time()
        try:
            losses = train_epoch(model, train_items, optimizer, args, generator, device, epoch)
        except NonFiniteLoss as error:
            kept = f"{last} (epoch {rows[-1]['epoch']})" if rows else "none (no epoch finished)"
            raise FloatingPointError(f"{error}; stopping; last good checkpoint: {kept}. Lower --lr or check the features")
        row = {"epoch": epoch, "train_loss": losses["total"], "inter_loss": losses["inter"], "top_loss": losses["top"],
               "bottom_loss": losses["bottom"], "val_R@1": "", "val_R@10": "", "val_MedR": ""}
        improved = True
        if val_items:
            val = validate(model, val_items)
            row.update({"val_R@1": val["R@1"], "val_R@10": val["R@10"], "val_MedR": val["MedR"]})
            improved = is_better(val, best)
            if improved:
                best = {"epoch": epoch, "R@10": val["R@10"], "MeanR": val["MeanR"]}
        else:
            best = {"epoch": epoch}
        row["seconds"] = round(time.time() - began, 3)
        rows.append(row)
        state = {"model_type": "transformer", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "config": model.config, "run_args": run_args, "args": plain_args(args),
                 "features": feature_names(args.train_data_dir),
                 "train_ids": [it.id for it in train_items], "val_ids": [it.id for it in val_items],
                 "rng": torch.get_rng_state(), "generator": generator.get_state(), "log": rows, "best": best}
        if improved:
            save_checkpoint(save_dir / "best.pt", state)
        save_checkpoint(last, state)
        write_log(save_dir, rows)
        shown = f"val R@1 {row['val_R@1']:.3f} R@10 {row['val_R@10']:.3f} MedR {row['val_MedR']}" if val_items else "no validation"
        tqdm.write(f"epoch {epoch}: loss {losses['total']:.4f}  {shown}{'  (best)' if improved and val_items else ''}",
                   file=sys.stderr)
    return save_dir / "best.pt"


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        best = run(args)
    except (ValueError, FloatingPointError) as error:  # bad data, train/test overlap, a non-finite loss
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    if args.test_csv_path:
        from transformer.test import evaluate, print_summary

        metrics = evaluate(best, args.test_data_dir or args.train_data_dir, args.test_csv_path,
                           Path(args.save_dir) / "metrics.json", flow_ranks=args.flow_ranks,
                           segments_from=args.segments_from)
        print_summary(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
