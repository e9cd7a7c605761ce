"""Train the segment Transformer on fixed feature folders and flow segments.

    python transformer/train.py --train_data_dir DATA --train_csv_path DATA/train.csv \
        --test_csv_path DATA/test.csv --flow_ranks DATA/flow/ranks.csv --save_dir runs/transformer

Only ids of the train CSV are used; any id that is also in the test CSV is an error. A seeded
--val_fraction of them selects best.pt and stops training early (validation recall under the test
protocol: music cut from the music alone, whole validation gallery); the test CSV is never used for
selection. Every epoch writes last.pt atomically (plain dicts, loadable with torch.load(weights_only=True));
--resume continues from it and ends where an uninterrupted run ends.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from transformer.data import collate, encode_timeline, item_rows, load_items
from transformer.losses import aligned_matrix, flow_triplet_losses, pairing_loss, pooled, second_loss
from transformer.model import SegmentTransformer
from transformer.scorer import RERANK, TransformerScorer
from vmr.data import check_dims, feature_names, load_gallery, read_ids
from vmr.metrics import selection_key
from vmr.runs import check_resume_flags, feature_provenance, prepare_run_dir
from vmr.scorer import gallery_recall
from vmr.training import param_groups, plain_args, save_checkpoint, training_split, write_log

LOG_COLUMNS = ["epoch", "train_loss", "val_scoring", "val_R@1", "val_R@10", "val_MedR", "val_pooled_R@1", "val_aligned_R@1",
               "seconds", "inter_loss",
               "top_loss", "bottom_loss", "lr"]
# flags that define the run (epochs too: the cosine schedule ends at the last); output paths and --resume may change
RUN_FLAGS = ["embed_dim", "num_heads", "num_layers", "ff_dim", "dropout", "smooth", "init", "max_seq_len", "batch_size",
             "lr", "warmup", "schedule", "epochs", "weight_decay", "loss", "temperature", "margin", "top_k", "flow_margin",
             "flow_k", "lambda1", "lambda_aligned", "lambda_pooled", "lambda2", "lambda3", "scoring", "val_fraction", "val_csv_path", "seed",
             "max_seconds", "n_bkps", "min_seconds", "segments_from"]


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
                      help="video segments. ranks: ids missing from ranks.csv are skipped with a warning; features: they "
                           "(or all ids, without --flow_ranks) are cut where the video features change (default ranks)")
    data.add_argument("--n_bkps", type=int, default=7, help="change points per track for music (and --segments_from features) (default 7)")
    data.add_argument("--min_seconds", type=int, default=10, help="shortest music segment in seconds (default 10)")
    data.add_argument("--max_seq_len", type=int, default=200, help="longer segments are split into near-equal parts (default 200 s, original)")
    data.add_argument("--max_seconds", type=int, default=None, help="use only the first N seconds of each item (default: all)")
    model = p.add_argument_group("model")
    model.add_argument("--embed_dim", type=int, default=64, help="encoder width and embedding size (default 64)")
    model.add_argument("--num_heads", type=int, default=4, help="attention heads (default 4)")
    model.add_argument("--num_layers", type=int, default=2, help="encoder layers per modality (default 2)")
    model.add_argument("--ff_dim", type=int, default=256, help="feed-forward width (default 256)")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout (default 0)")
    model.add_argument("--smooth", type=int, default=5,
                       help="width in seconds of the learned temporal smoothing of the per-second outputs, starting as a box "
                            "average; odd, 1 = none (default 5)")
    model.add_argument("--init", choices=["linear", "random"], default="linear",
                       help="linear = input projections start at the tuned time-aligned linear baseline's directions (ridge and "
                            "number chosen on validation) and the output projection at the identity; random = PyTorch's "
                            "default (default linear)")
    loss = p.add_argument_group("losses")
    loss.add_argument("--loss", choices=["infonce", "hinge"], default="infonce",
                      help="form of the track-score losses (--lambda_aligned, --lambda_pooled): temperature-scaled InfoNCE or "
                           "VM-NET's hinge (default infonce)")
    loss.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature, per-second and track losses (default 0.05)")
    loss.add_argument("--margin", type=float, default=0.1, help="hinge margin (default 0.1, VM-NET)")
    loss.add_argument("--top_k", type=int, default=16, help="hinge: hardest negatives per anchor (default 16, original)")
    loss.add_argument("--flow_margin", type=float, default=0.1, help="TripletMarginLoss margin of the flow-rank triplets (default 0.1, original)")
    loss.add_argument("--flow_k", type=int, default=16, help="flow-rank triplets sampled per batch and kind (default 16, original)")
    loss.add_argument("--lambda1", type=float, default=1.0, help="weight of the per-second inter-modal InfoNCE (default 1.0)")
    loss.add_argument("--lambda_aligned", type=float, default=0.0, help="weight of the loss on the batch's aligned track scores (default 0)")
    loss.add_argument("--lambda_pooled", type=float, default=0.0, help="weight of the loss on the batch's pooled track scores (default 0)")
    loss.add_argument("--lambda2", type=float, default=0.1, help="weight of the top flow-rank triplets (default 0.1; 0 turns them off)")
    loss.add_argument("--lambda3", type=float, default=0.1, help="weight of the bottom flow-rank triplets (default 0.1; 0 turns them off)")
    train = p.add_argument_group("training")
    train.add_argument("--save_dir", default="runs/transformer", help="checkpoints, train_log.csv/.png, metrics.json (default runs/transformer)")
    train.add_argument("--overwrite", action="store_true", help="remove the results of an earlier run in --save_dir first")
    train.add_argument("--epochs", type=int, default=12, help="epochs; the cosine schedule ends at the last (default 12)")
    train.add_argument("--patience", type=int, default=6, help="stop after this many epochs without a better validation score (default 6; 0 = never)")
    train.add_argument("--batch_size", type=int, default=64, help="videos per batch, all their segments together (default 64)")
    train.add_argument("--lr", type=float, default=3e-4, help="AdamW peak learning rate (default 3e-4)")
    train.add_argument("--warmup", type=int, default=100, help="steps of linear learning-rate warm-up (default 100)")
    train.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                       help="after the warm-up: cosine decay to 0 at the last epoch, or constant (default cosine)")
    train.add_argument("--weight_decay", type=float, default=1e-2, help="AdamW weight decay (default 1e-2)")
    train.add_argument("--scoring", choices=["auto", "aligned", "pooled"], default="auto",
                       help="track score that selects best.pt and heads test.py's table; auto: whichever of the two has the "
                            "better validation key at each epoch, recorded in best.pt (default auto)")
    train.add_argument("--val_fraction", type=float, default=0.1, help="seeded share of the train ids that selects best.pt (default 0.1; 0 = best is last)")
    train.add_argument("--val_csv_path", default=None, help="CSV of validation ids (a published validation split) instead of --val_fraction (default: none)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation, shuffling, dropout and triplet sampling (default 0)")
    train.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--resume", action="store_true", help="continue from SAVE_DIR/last.pt")
    return p


class NonFiniteLoss(RuntimeError):
    pass


def input_stats(items):
    """Mean and std of every video and audio row of the training items (float64 sums, one read of each item)."""
    out = []
    for kind in ("video", "audio"):
        n, total, squares = 0, 0.0, 0.0
        for rows in item_rows(items, kind):
            n += len(rows)
            total = total + rows.sum(0, dtype=np.float64)
            squares = squares + np.square(rows, dtype=np.float64).sum(0)
        mean = total / n
        out += [mean, np.sqrt(np.maximum(squares / n - mean * mean, 0))]
    return out


def linear_start(train_items, val, max_dims, ridge=1e-2):
    """(video directions (Dv, d), audio directions (Da, d), video mean, audio mean, ridge) of the tuned time-aligned
    linear baseline (per-second CCA, ridge and d <= max_dims chosen on the validation Gallery, as every evaluation
    tunes it); without validation, ridge `ridge` and the first max_dims directions."""
    from vmr.baselines import ALIGNED_DIMS, CCA, tuned_aligned_linear

    train = (item_rows(train_items, "video"), item_rows(train_items, "audio"))
    if val is not None:
        baseline = tuned_aligned_linear(train, val, dims=[d for d in ALIGNED_DIMS if d <= max_dims] or [max_dims])
        cca, dims, ridge = baseline.model, baseline.dims, baseline.ridge
    else:
        cca = CCA(*train, ridge)
        dims = min(max_dims, cca.proj_v.shape[1])
    return cca.proj_v[:, :dims], cca.proj_a[:, :dims], cca.mean_v, cca.mean_a, ridge


@torch.no_grad()
def init_from_linear(model, proj_video, proj_audio, mean_video, mean_audio):
    """Start both encoders at the time-aligned linear baseline: input projection row k < d = canonical direction k
    of that modality (on the standardised inputs the model sees), rows past d zero, output projection the identity,
    and each block's two residual branches (attention output, second feed-forward layer) zero, so that they start
    as the identity (as in ReZero / Fixup). Per-second output k is then canonical variate k, all d with equal
    weight, as the baseline scores them (up to the final layer norm); training refines that (temporal context, nonlinearity) instead of having
    to find the few shared directions in very noisy per-second rows by gradient descent."""
    d = proj_video.shape[1]
    if d > model.video.input.out_features:
        raise ValueError(f"{d} linear directions do not fit --embed_dim {model.video.input.out_features}")
    for encoder, proj, mean in ((model.video, proj_video, mean_video), (model.audio, proj_audio, mean_audio)):
        proj, mean = torch.from_numpy(np.asarray(proj, np.float32)), torch.from_numpy(np.asarray(mean, np.float32))
        # x = std * x_std + m, so proj . (x - mean) = (proj * std) . x_std + proj . (m - mean)
        encoder.input.weight.zero_()
        encoder.input.bias.zero_()
        encoder.input.weight[:d] = (proj * encoder.std.unsqueeze(1)).T
        encoder.input.bias[:d] = proj.T @ (encoder.mean - mean)
        encoder.output.weight.copy_(torch.eye(encoder.output.out_features))
        encoder.output.bias.zero_()
        for block in encoder.blocks:
            for branch_end in (block.out, block.ff[-1]):
                branch_end.weight.zero_()
                branch_end.bias.zero_()


def steps_per_epoch(n_items, batch_size):
    """Optimiser steps in one epoch: batches of one item are skipped (no negatives)."""
    return n_items // batch_size + (n_items % batch_size >= 2)


def lr_factor(args, steps):
    """Learning-rate multiplier per step: linear warm-up over --warmup steps, then constant or cosine to 0 at --epochs."""
    total = max(args.epochs * steps, 1)

    def factor(step):
        warm = min(1.0, (step + 1) / max(args.warmup, 1))
        if args.schedule == "constant":
            return warm
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step / total, 1.0)))
    return factor


def batch_losses(model, batch, args, generator, device):
    """(total, inter, top, bottom) of one batch; inter = the weighted inter-modal terms."""
    b, length = len(batch.lengths), int(batch.lengths.max())
    video = encode_timeline(model.video, batch.video, b, length, device)
    audio = encode_timeline(model.audio, batch.audio, b, length, device)
    lengths = batch.lengths.float()
    inter = args.lambda1 * second_loss(video, audio, batch.lengths, args.temperature)
    options = dict(kind=args.loss, temperature=args.temperature, margin=args.margin, top_k=args.top_k)
    if args.lambda_aligned:
        inter = inter + args.lambda_aligned * pairing_loss(aligned_matrix(video, audio, lengths), **options)
    if args.lambda_pooled:
        inter = inter + args.lambda_pooled * pairing_loss(pooled(video, lengths) @ pooled(audio, lengths).T, **options)
    top, bottom = flow_triplet_losses(video, audio, batch.top, batch.bottom, batch.n_segments, args.flow_margin,
                                      args.flow_k, generator)
    return inter + args.lambda2 * top + args.lambda3 * bottom, inter, top, bottom


def train_epoch(model, items, optimizer, schedule, args, generator, device, epoch):
    """One pass over the items in a seeded order; returns mean losses {total, inter, top, bottom}."""
    model.train()
    order = torch.randperm(len(items), generator=generator).tolist()
    sums = dict(total=0.0, inter=0.0, top=0.0, bottom=0.0)
    steps = 0
    bar = tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch}", unit="batch", leave=False)
    for step, start in enumerate(bar):
        chosen = [items[i] for i in order[start:start + args.batch_size]]
        if len(chosen) < 2:  # one video has no negatives
            continue
        loss, inter, top, bottom = batch_losses(model, collate(chosen), args, generator, device)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"epoch {epoch} batch {step}: loss is {loss.item()} "
                                f"(inter {inter.item()}, top {top.item()}, bottom {bottom.item()})")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        for key, value in zip(sums, (loss, inter, top, bottom)):
            sums[key] += float(value.detach())
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return {key: value / max(steps, 1) for key, value in sums.items()}


def validate(model, record, val, boundaries):
    """The validation Gallery (whole videos at their flow segments, the library of their whole tracks) ranked by
    the Transformer's scorer as test.py and retrieve.py rank, every track rescored: video -> music blocks of
    both scorings."""
    aligned, pooled = gallery_recall(TransformerScorer(model, record, "aligned", rerank=0), val, boundaries)
    return {"pooled": pooled, "aligned": aligned}


def head_scoring(scoring, val):
    """The scoring that selects: --scoring, or with auto the one with the better validation key (aligned without validation)."""
    if scoring != "auto":
        return scoring
    if val is None:
        return "aligned"
    return max(("aligned", "pooled"), key=lambda name: list(selection_key(val[name])))


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    save_dir = prepare_run_dir(args.save_dir, args.resume, args.overwrite)
    train_ids, val_ids = training_split(args)
    load = dict(flow_ranks=args.flow_ranks, segments_from=args.segments_from, max_seq_len=args.max_seq_len,
                max_seconds=args.max_seconds, n_bkps=args.n_bkps, min_seconds=args.min_seconds)
    train_items = load_items(args.train_data_dir, train_ids, **load)
    dims = (train_items[0].video.shape[1], train_items[0].audio.shape[1])
    val_items = load_items(args.train_data_dir, val_ids, **load, dims=dims) if val_ids else []
    val = load_gallery(args.train_data_dir, [it.id for it in val_items], dims, "validation features") if val_items else None
    val_boundaries = [[int(p[0]) for p in it.video_parts] + [int(it.video_parts[-1][1])] for it in val_items]
    if args.test_csv_path:  # a test set of another width fails now, not after training
        check_dims(args.test_data_dir or args.train_data_dir, read_ids(args.test_csv_path), dims)
    if len(train_items) < 2:
        raise ValueError(f"{args.train_csv_path}: need at least 2 usable training videos, got {len(train_items)}")
    n_parts = sum(len(it.video_parts) for it in train_items)
    print(f"{len(train_items)} training videos ({n_parts} video segments), {len(val_items)} validation videos", file=sys.stderr)

    torch.manual_seed(args.seed)
    model = SegmentTransformer(*dims, args.embed_dim, args.num_heads, args.num_layers, args.ff_dim, args.dropout,
                               args.max_seq_len, args.smooth).to(device)
    model.set_input_stats(*input_stats(train_items))
    if args.init == "linear":
        start = linear_start(train_items, val, args.embed_dim)
        print(f"starting at the time-aligned linear model: ridge {start[4]:g}, {start[0].shape[1]} directions", file=sys.stderr)
        init_from_linear(model, *start[:4])
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args, steps_per_epoch(len(train_items), args.batch_size)))
    generator = torch.Generator().manual_seed(args.seed)
    rows, best, first_epoch = [], None, 1
    run_args = {key: getattr(args, key) for key in RUN_FLAGS}
    record = {"model_type": "transformer", "config": model.config, "run_args": run_args, "args": plain_args(args),
              "features": feature_names(args.train_data_dir), "provenance": feature_provenance(args.train_data_dir),
              "train_data_dir": str(Path(args.train_data_dir).resolve()), "train_ids": [it.id for it in train_items],
              "val_ids": [it.id for it in val_items], "rerank": RERANK}
    last = save_dir / "last.pt"
    if args.resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        check_resume_flags(last, state["run_args"], run_args)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        generator.set_state(state["generator"])
        rows, best, first_epoch = state["log"], state["best"], state["epoch"] + 1
        print(f"resuming after epoch {state['epoch']}", file=sys.stderr)

    for epoch in range(first_epoch, args.epochs + 1):
        if best and val_items and args.patience and epoch - best["epoch"] > args.patience:
            print(f"early stop: no better validation score since epoch {best['epoch']}", file=sys.stderr)
            break
        began = time.time()
        try:
            losses = train_epoch(model, train_items, optimizer, schedule, args, generator, device, epoch)
        except NonFiniteLoss as error:
            kept = f"{last} (epoch {rows[-1]['epoch']})" if rows else "none (no epoch finished)"
            raise FloatingPointError(f"{error}; stopping; last good checkpoint: {kept}. Lower --lr or check the features")
        row = {"epoch": epoch, "train_loss": losses["total"], "inter_loss": losses["inter"], "top_loss": losses["top"],
               "bottom_loss": losses["bottom"], "lr": optimizer.param_groups[0]["lr"],
               "val_scoring": "", "val_R@1": "", "val_R@10": "", "val_MedR": "", "val_pooled_R@1": "", "val_aligned_R@1": ""}
        improved = True
        if val_items:
            scores = validate(model, record, val, val_boundaries)
            scoring = head_scoring(args.scoring, scores)
            head = scores[scoring]
            row.update({"val_scoring": scoring, "val_R@1": head["R@1"], "val_R@10": head["R@10"], "val_MedR": head["MedR"],
                        "val_pooled_R@1": scores["pooled"]["R@1"], "val_aligned_R@1": scores["aligned"]["R@1"]})
            improved = best is None or "key" not in best or list(selection_key(head)) > best["key"]
            if improved:
                best = {"epoch": epoch, "key": list(selection_key(head)), "R@1": head["R@1"], "R@10": head["R@10"],
                        "scoring": scoring}
        else:
            best = {"epoch": epoch, "scoring": head_scoring(args.scoring, None)}
        row["seconds"] = round(time.time() - began, 3)
        rows.append(row)
        # every checkpoint names a resolved scoring (this epoch's choice; best.pt the one it was selected with), so
        # test.py and retrieve.py rank last.pt and best.pt alike
        state = {**record, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "epoch": epoch, "scoring": row["val_scoring"] or best["scoring"], "rng": torch.get_rng_state(),
                 "generator": generator.get_state(), "log": rows, "best": best}
        if improved:
            save_checkpoint(save_dir / "best.pt", {**{k: v for k, v in state.items() if k not in ("optimizer", "schedule")},
                                                   "scoring": best["scoring"]})
        save_checkpoint(last, state)
        write_log(save_dir, rows, LOG_COLUMNS)
        shown = (f"val {row['val_scoring']} R@1 {row['val_R@1']:.3f} R@10 {row['val_R@10']:.3f} MedR {row['val_MedR']}"
                 if val_items else "no validation")
        tqdm.write(f"epoch {epoch}: loss {losses['total']:.4f}  {shown}  {row['seconds']:.1f} s"
                   f"{'  (best)' if improved and val_items else ''}", file=sys.stderr)
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
        from transformer.scorer import load
        from vmr.evaluation import evaluate, print_summary

        try:
            metrics = evaluate(*load(best), best, args.test_data_dir or args.train_data_dir, args.test_csv_path,
                               Path(args.save_dir) / "metrics.json", flow_ranks=args.flow_ranks)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print_summary(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
