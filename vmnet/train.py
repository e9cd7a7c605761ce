r"""Train VM-NET on mean-pooled per-second features.

    python vmnet/train.py --train_data_dir data/yt8m --train_csv_path data/yt8m/train.csv \
        --test_data_dir data/yt8m --test_csv_path data/yt8m/test.csv --save_dir runs/vmnet

Writes SAVE_DIR/last.pt every epoch (resume point), best.pt (the epoch with the best
validation recall on a seeded --val_fraction of the train CSV), train_log.csv and
train_log.png, and after training metrics.json / retrieval.json on the test CSV (never used
for selection). Checkpoints are plain dicts that load with torch.load(weights_only=True).
"""
import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

from feature_extraction.atomic import atomic_path, write_text
from vmnet.data import check_overlap, feature_names, load_pooled, read_ids
from vmnet.losses import vmnet_loss
from vmnet.metrics import retrieval_metrics
from vmnet.model import VMNet, embed_rows

PRESETS = {
    # Hong et al. 2018 (and csehong/VM-NET): cosine margin 0.1, 100 hardest negatives.
    "paper": {"margin": 0.1, "top_k": 100},
    # smerrillunc/VMR VMNET/train.py at HEAD: margin 0.5, train_top_K 10.
    "original": {"margin": 0.5, "top_k": 10},
}
LOG_COLUMNS = ["epoch", "train_loss", "val_R@1", "val_R@10", "val_MedR", "seconds", "loss_xy", "loss_yx", "loss_x", "loss_y", "lr"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_data_dir", required=True, help="folder with video/<id>.npy and audio/<id>.npy (see vmnet/prepare.py)")
    p.add_argument("--train_csv_path", required=True, help="CSV of training ids (header ID, or headerless <id>.npy lines)")
    p.add_argument("--test_data_dir", help="folder of the test features (default: --train_data_dir)")
    p.add_argument("--test_csv_path", help="CSV of test ids, evaluated once after training; must not overlap the train CSV")
    p.add_argument("--save_dir", default="runs/vmnet", help="where checkpoints, train_log.csv/.png and metrics.json go")
    p.add_argument("--epochs", type=int, default=100, help="number of passes over the training ids")
    p.add_argument("--batch_size", type=int, default=1024, help="batch size (paper and original: 1024), clipped to the number of training ids; incomplete batches are dropped")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (paper and original: 3e-4)")
    p.add_argument("--lr_decay", type=float, default=0.96, help="staircase decay factor (original: 0.96 every 1000 steps)")
    p.add_argument("--lr_decay_steps", type=int, default=1000, help="steps between learning-rate decays")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: margin 0.1, top_k 100 (Hong et al. 2018); original: margin 0.5, top_k 10 (smerrillunc/VMR)")
    p.add_argument("--margin", type=float, help="ranking-loss margin (default from --preset)")
    p.add_argument("--top_k", type=int, help="hardest negatives per anchor, clipped to batch - 1 (default from --preset)")
    p.add_argument("--loss_weights", type=float, nargs=4, default=[3.0, 1.0, 0.2, 0.2], metavar=("XY", "YX", "X", "Y"),
                   help="weights of music->video ranking, video->music ranking, music structure, video structure (paper and original: 3 1 0.2 0.2)")
    p.add_argument("--num_layers_music", type=int, default=3, help="layers of the music branch (original: 3)")
    p.add_argument("--num_layers_video", type=int, default=2, help="layers of the video branch (original: 2)")
    p.add_argument("--embed_dim", type=int, default=512, help="joint embedding size (original: 512)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout probability (original keep_prob 0.9)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="seeded fraction of the train CSV held out to select best.pt (0: best = last epoch)")
    p.add_argument("--max_seconds", type=int, help="use only the first N seconds of every item")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation, shuffling and dropout")
    p.add_argument("--resume", action="store_true", help="continue from SAVE_DIR/last.pt; ends with the same result as an uninterrupted run")
    p.add_argument("--device", default="cpu", help="cpu or cuda (deterministic on cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.test_data_dir = args.test_data_dir or args.train_data_dir
    return args


def split_validation(ids, fraction, seed):
    """Seeded (train_ids, val_ids); no validation when it would hold fewer than 2 ids."""
    n_val = int(round(fraction * len(ids)))
    if n_val < 2 or len(ids) - n_val < 2:
        return list(ids), []
    order = np.random.default_rng(seed).permutation(len(ids))
    val = set(order[:n_val].tolist())
    return [v for i, v in enumerate(ids) if i not in val], [v for i, v in enumerate(ids) if i in val]


def save_checkpoint(path, state):
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def validation_scores(model, video, audio, device):
    """Whole-gallery video->music metrics of the validation ids."""
    model.eval()
    v_emb = embed_rows(model.embed_video, video, device=device)
    m_emb = embed_rows(model.embed_music, audio, device=device)
    return retrieval_metrics(v_emb, m_emb, with_ranks=False)["video_to_music"]


def is_better(val, best):
    """Higher validation video->music R@10 wins; ties go to the lower mean rank."""
    return best is None or (val["R@10"], -val["MeanR"]) > (best["R@10"], -best["MeanR"])


def write_log(save_dir, history, plot=True):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(Path(save_dir) / "train_log.csv", buf.getvalue())
    if plot:
        plot_log(history, Path(save_dir) / "train_log.png")


def plot_log(history, path):
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend (notebooks)

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [row["train_loss"] for row in history], "-o", ms=3)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    for key in ("val_R@1", "val_R@10"):
        values = [row[key] for row in history]
        if any(v != "" for v in values):
            ax2.plot(epochs, [np.nan if v == "" else v for v in values], "-o", ms=3, label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation recall (video -> music)")
    ax2.set_ylim(0, 1)
    if ax2.lines:
        ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def plain_args(args):
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def train(args):
    """Train (or resume) and return the path of best.pt."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)

    ids = read_ids(args.train_csv_path)
    if args.test_csv_path:
        check_overlap(ids, read_ids(args.test_csv_path))
    ids, video, audio = load_pooled(args.train_data_dir, ids, args.max_seconds, desc="train features")
    train_ids, val_ids = split_validation(ids, args.val_fraction, args.seed)
    index = {vid: i for i, vid in enumerate(ids)}
    tr = np.array([index[v] for v in train_ids])
    va = np.array([index[v] for v in val_ids], dtype=int)
    if len(tr) < 2:
        raise ValueError(f"{args.train_csv_path}: need at least 2 training ids, got {len(tr)}")
    train_v = torch.as_tensor(video[tr])
    train_a = torch.as_tensor(audio[tr])

    torch.manual_seed(args.seed)
    config = {"video_dim": video.shape[1], "audio_dim": audio.shape[1], "num_layers_video": args.num_layers_video,
              "num_layers_music": args.num_layers_music, "embed_dim": args.embed_dim, "dropout": args.dropout}
    model = VMNet(**config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    shuffle = torch.Generator().manual_seed(args.seed)
    start_epoch, step, history, best = 0, 0, [], None

    last = save_dir / "last.pt"
    if args.resume and last.is_file():
        ckpt = torch.load(last, weights_only=True, map_location="cpu")
        if ckpt["config"] != config:
            raise ValueError(f"{last}: made for {ckpt['config']}, this run has {config}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        if device.type == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        shuffle.set_state(ckpt["shuffle_rng"])
        start_epoch, step, history, best = ckpt["epoch"], ckpt["step"], ckpt["history"], ckpt["best"]
        print(f"resuming {last} after epoch {start_epoch}", file=sys.stderr)

    batch = min(args.batch_size, len(tr))
    weights = tuple(args.loss_weights)
    from tqdm import tqdm

    features = feature_names(args.train_data_dir)
    last_plot = time.time()
    bar = tqdm(range(start_epoch, args.epochs), desc="VM-NET", unit="epoch", initial=start_epoch, total=args.epochs)
    for epoch in bar:
        t0 = time.time()
        model.train()
        order = torch.randperm(len(tr), generator=shuffle)
        sums = {"total": 0.0, "xy": 0.0, "yx": 0.0, "x": 0.0, "y": 0.0}
        n_batches = len(tr) // batch
        for b in range(n_batches):
            lr = args.lr * args.lr_decay ** (step // args.lr_decay_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[b * batch:(b + 1) * batch]
            v, a = train_v[idx].to(device), train_a[idx].to(device)
            v_emb, a_emb = model(v, a)
            loss, parts = vmnet_loss(a, v, a_emb, v_emb, args.margin, args.top_k, weights)
            if not torch.isfinite(loss):
                kept = f"the last good checkpoint {last} (epoch {history[-1]['epoch']})" if history else "no checkpoint (none written yet)"
                if history:
                    write_log(save_dir, history)
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; stopping and keeping {kept}. "
                                         "Lower --lr or check the features")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            sums["total"] += loss.item()
            for k, val in parts.items():
                sums[k] += val.item()
        row = {"epoch": epoch + 1, "train_loss": sums["total"] / n_batches, "lr": lr,
               **{f"loss_{k}": sums[k] / n_batches for k in ("xy", "yx", "x", "y")},
               "val_R@1": "", "val_R@10": "", "val_MedR": ""}
        improved = True
        if len(va):
            val = validation_scores(model, video[va], audio[va], device)
            row.update({"val_R@1": val["R@1"], "val_R@10": val["R@10"], "val_MedR": val["MedR"]})
            improved = is_better(val, best)
            if improved:
                best = {"epoch": epoch + 1, "R@10": val["R@10"], "MeanR": val["MeanR"]}
        else:
            best = {"epoch": epoch + 1}
        row["seconds"] = round(time.time() - t0, 3)
        history.append(row)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                 "config": config, "args": plain_args(args), "rng": torch.get_rng_state(), "shuffle_rng": shuffle.get_state(),
                 "history": history, "best": best, "val_ids": list(val_ids),
                 "features": features}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if improved:  # best.pt is for evaluation and retrieval: no optimiser state
            save_checkpoint(save_dir / "best.pt", {k: v for k, v in state.items() if k != "optimizer"})
        save_checkpoint(last, state)
        plot = epoch + 1 == args.epochs or time.time() - last_plot > 60  # the PNG costs more than a small epoch
        write_log(save_dir, history, plot)
        last_plot = time.time() if plot else last_plot
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_R10=row["val_R@10"] if row["val_R@10"] == "" else f"{row['val_R@10']:.3f}")
    return save_dir / "best.pt"


def main(argv=None):
    args = parse_args(argv)
    try:
        best = train(args)
    except (ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    if args.test_csv_path:
        from vmnet.test import evaluate, print_summary

        metrics = evaluate(best, args.test_data_dir, args.test_csv_path, Path(args.save_dir) / "metrics.json",
                           train_data_dir=args.train_data_dir, train_csv=args.train_csv_path, seed=args.seed)
        print_summary(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
