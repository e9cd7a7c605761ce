r"""Train VM-NET on mean-pooled per-second features.

    python vmnet/train.py --train_data_dir data/yt8m --train_csv_path data/yt8m/train.csv \
        --test_data_dir data/yt8m --test_csv_path data/yt8m/test.csv --save_dir runs/vmnet

A seeded --val_fraction of the train CSV is held out. For each learning rate of --lr the model trains
until the validation score (vmr.metrics.selection_key: R@1 + R@5 + R@10, video to music, whole
validation gallery) has not improved for --patience epochs; best.pt is the best epoch of the best
learning rate, so learning rate and epochs are chosen on validation only. The test CSV is evaluated once
after training (metrics.json / retrieval.json), never used for selection.

Presets: "tuned" (default) standardises inputs with the training split's statistics (stored in the
checkpoint), and regularises with AdamW weight decay, dropout and random-window pooling (each epoch, an
item's video and music are averaged over the same short random window, 10-30% of its seconds: many more
distinct training pairs than items, whose shared latent changes from window to window); "paper" keeps
Hong et al. 2018's settings for comparison; "original" smerrillunc/VMR's. Every preset keeps the
paper's architecture and losses (vmnet/model.py, vmnet/losses.py).

Writes SAVE_DIR/last.pt every epoch (resume point), best.pt, train_log.csv and train_log.png.
Checkpoints are plain dicts that load with torch.load(weights_only=True).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vmnet.losses import vmnet_loss
from vmnet.model import VMNet, init_from_cca
from vmnet.scorer import VMNetScorer
from vmr.baselines import CCA, tuned_cca
from vmr.data import check_dims, feature_names, load_gallery, load_sequences, read_ids
from vmr.metrics import selection_key
from vmr.runs import check_resume_flags, feature_provenance, prepare_run_dir
from vmr.scorer import gallery_recall
from vmr.training import param_groups, plain_args, save_checkpoint, training_split, write_log

PRESETS = {
    "tuned": {"init": "cca", "margin": 0.2, "top_k": 10, "lr": [1e-3, 3e-4], "dropout": 0.5, "weight_decay": 1e-2, "crop": [0.1, 0.3],
              "batch_size": 256, "epochs": 200, "patience": 20, "standardize": True},
    # Hong et al. 2018 (and csehong/VM-NET): cosine margin 0.1, 100 hardest negatives, Adam 3e-4, keep_prob 0.9.
    "paper": {"init": "random", "margin": 0.1, "top_k": 100, "lr": [3e-4], "dropout": 0.1, "weight_decay": 0.0, "crop": [1.0, 1.0],
              "batch_size": 1024, "epochs": 100, "patience": 0, "standardize": False},
    # smerrillunc/VMR VMNET/train.py at HEAD: margin 0.5, train_top_K 10.
    "original": {"init": "random", "margin": 0.5, "top_k": 10, "lr": [3e-4], "dropout": 0.1, "weight_decay": 0.0, "crop": [1.0, 1.0],
                 "batch_size": 1024, "epochs": 100, "patience": 0, "standardize": False},
}
LOG_COLUMNS = ["epoch", "lr_index", "train_loss", "val_R@1", "val_R@10", "val_MedR", "seconds", "loss_xy", "loss_yx",
               "loss_x", "loss_y", "lr"]
# flags that define the run; the rest (paths to outputs, epochs, resume) may change on --resume
RUN_FLAGS = ["preset", "init", "margin", "top_k", "lr", "dropout", "weight_decay", "crop", "batch_size", "patience", "standardize",
             "lr_decay", "lr_decay_steps", "loss_weights", "num_layers_music", "num_layers_video", "embed_dim",
             "val_fraction", "val_csv_path", "max_seconds", "seed"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_data_dir", required=True, help="folder with video/<id>.npy and audio/<id>.npy (see vmnet/prepare.py)")
    p.add_argument("--train_csv_path", required=True, help="CSV of training ids (header ID, or headerless <id>.npy lines)")
    p.add_argument("--test_data_dir", help="folder of the test features (default: --train_data_dir)")
    p.add_argument("--test_csv_path", help="CSV of test ids, evaluated once after training; must not overlap the train CSV (default: none)")
    p.add_argument("--save_dir", default="runs/vmnet", help="where checkpoints, train_log.csv/.png and metrics.json go (default runs/vmnet)")
    p.add_argument("--overwrite", action="store_true", help="remove the results of an earlier run in --save_dir first")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tuned",
                   help="defaults of the flags below: tuned (default; see above), paper (Hong et al. 2018), original (smerrillunc/VMR)")
    p.add_argument("--init", choices=("cca", "random"),
                   help="cca: start at the tuned pooled CCA baseline (fitted on the training ids, ridge and directions chosen on "
                        "validation; vmnet/model.py init_from_cca), random: He initialisation (tuned cca, paper random)")
    p.add_argument("--epochs", type=int, help="most passes over the training ids per learning rate (tuned 200, paper 100)")
    p.add_argument("--patience", type=int, help="stop a learning rate after this many epochs without a better validation score; 0 = never (tuned 20, paper 0)")
    p.add_argument("--batch_size", type=int, help="batch size, clipped to the number of training ids; incomplete batches are dropped (tuned 256, paper 1024)")
    p.add_argument("--lr", type=float, nargs="+", help="AdamW learning rates to try; the best on validation is kept (tuned 1e-3 3e-4, paper 3e-4)")
    p.add_argument("--weight_decay", type=float, help="AdamW weight decay (tuned 1e-2, paper 0)")
    p.add_argument("--dropout", type=float, help="dropout probability (tuned 0.5, paper 0.1 = keep_prob 0.9)")
    p.add_argument("--crop", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="random-window pooling: each epoch, every item's video and music are averaged over the same random window, "
                        "its width a uniform share in [LOW, HIGH] of the item's seconds; 1 1 = whole items (tuned 0.1 0.3, paper 1 1)")
    p.add_argument("--standardize", type=int, choices=(0, 1), help="1: standardise inputs with the training split's mean and std (tuned 1, paper 0)")
    p.add_argument("--lr_decay", type=float, default=0.96, help="staircase decay factor (default 0.96, the paper's, every --lr_decay_steps)")
    p.add_argument("--lr_decay_steps", type=int, default=1000, help="steps between learning-rate decays (default 1000)")
    p.add_argument("--margin", type=float, help="ranking-loss margin (tuned 0.2, paper 0.1, original 0.5)")
    p.add_argument("--top_k", type=int, help="hardest negatives per anchor, clipped to batch - 1 (tuned 10, paper 100, original 10)")
    p.add_argument("--loss_weights", type=float, nargs=4, default=[3.0, 1.0, 0.2, 0.2], metavar=("XY", "YX", "X", "Y"),
                   help="weights of music->video ranking, video->music ranking, music structure, video structure (default 3 1 0.2 0.2, the paper's)")
    p.add_argument("--num_layers_music", type=int, default=3, help="layers of the music branch (default 3, the paper's)")
    p.add_argument("--num_layers_video", type=int, default=2, help="layers of the video branch (default 2, the paper's)")
    p.add_argument("--embed_dim", type=int, default=512, help="joint embedding size (default 512, the paper's)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="seeded fraction of the train CSV held out for selection (default 0.1; 0: best = last epoch)")
    p.add_argument("--val_csv_path", help="CSV of validation ids (a published validation split) instead of --val_fraction (default: none)")
    p.add_argument("--max_seconds", type=int, help="use only the first N seconds of every item (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation, shuffling, crops and dropout (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from SAVE_DIR/last.pt; ends with the same result as an uninterrupted run")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; deterministic on cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.standardize = bool(args.standardize)
    args.test_data_dir = args.test_data_dir or args.train_data_dir
    return args


def validation_scores(scorer, val):
    """Whole-gallery video->music metrics of the validation ids (a vmr.data.Gallery of whole tracks), ranked by
    VM-NET's scorer as test.py and retrieve.py rank."""
    return gallery_recall(scorer, val)[0]


def stop_non_finite(save_dir, last, history, what):
    """FloatingPointError naming what went non-finite and the checkpoint that is kept (the log is written first)."""
    if history:
        write_log(save_dir, history, LOG_COLUMNS)
    kept = f"the last good checkpoint {last} (epoch {history[-1]['epoch']})" if history else "no checkpoint (none written yet)"
    return FloatingPointError(f"{what}; stopping and keeping {kept}. Lower --lr or check the features")


class CropPooler:
    """Each epoch's training rows: every item's video and music rows mean-pooled over one random window of the
    same seconds, its width a uniform share in [low, high] of the item's seconds ((1, 1): whole items).
    video / audio: lists of (T, D) arrays or a split folder's LazyRows, read one item at a time each epoch, so
    memory does not grow with the number of items."""

    def __init__(self, video, audio, share):
        self.low, self.high = share
        self.video, self.audio = video, audio

    def __call__(self, rng):
        cumsum = lambda s: np.concatenate([np.zeros((1, s.shape[1]), np.float32), np.cumsum(s, 0, dtype=np.float32)])  # noqa: E731
        video, audio = [], []
        for v, a in zip(self.video, self.audio):
            sv, sa = cumsum(v), cumsum(a)
            t = len(sv) - 1
            width = min(t, max(1, int(round(t * rng.uniform(self.low, self.high)))))
            start = int(rng.integers(0, t - width + 1))
            video.append((sv[start + width] - sv[start]) / width)
            audio.append((sa[start + width] - sa[start]) / width)
        return torch.from_numpy(np.stack(video)), torch.from_numpy(np.stack(audio))


def linear_start(args, train, val, max_dims=512):
    """With --init cca: the (video, audio) canonical directions VM-NET starts from, those of the tuned pooled CCA
    baseline (ridge and number of directions chosen on validation, as every evaluation reports it); without
    validation ids, ridge 1e-2 and all directions. None with --init random."""
    if args.init != "cca":
        return None
    if val is None:
        cca, dims, ridge = CCA(*train, 1e-2), max_dims, 1e-2
    else:
        baseline = tuned_cca(train, val)
        cca, dims, ridge = baseline.model, baseline.dims, baseline.ridge
    dims = min(dims, max_dims, cca.proj_v.shape[1])
    print(f"VM-NET starts at pooled CCA: ridge {ridge:g}, {dims} directions", file=sys.stderr)
    return cca.proj_v[:, :dims], cca.proj_a[:, :dims]


def train(args):
    """Train (or resume) and return the path of best.pt."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    save_dir = prepare_run_dir(args.save_dir, args.resume, args.overwrite)
    train_ids, val_ids = training_split(args)
    train_ids, train_v, train_a = load_sequences(args.train_data_dir, train_ids, args.max_seconds, None, "train features")
    if len(train_ids) < 2:
        raise ValueError(f"{args.train_csv_path}: need at least 2 training ids, got {len(train_ids)}")
    dims = (train_v[0].shape[1], train_a[0].shape[1])
    # validation items are read whole (videos and their library of tracks), as test.py and retrieve.py read them
    val = load_gallery(args.train_data_dir, val_ids, dims, "validation features") if val_ids else None
    val_ids = val.ids if val else []
    if args.test_csv_path:  # a test set of another width fails now, not after training
        check_dims(args.test_data_dir, read_ids(args.test_csv_path), dims)
    pool = lambda rows: np.stack([r.mean(0) for r in rows]) if rows else None  # noqa: E731
    video_pool, audio_pool = pool(train_v), pool(train_a)
    crops = CropPooler(train_v, train_a, args.crop)

    config = {"video_dim": dims[0], "audio_dim": dims[1], "num_layers_video": args.num_layers_video,
              "num_layers_music": args.num_layers_music, "embed_dim": args.embed_dim, "dropout": args.dropout}
    run_args = {key: getattr(args, key) for key in RUN_FLAGS}
    record = {"model_type": "vmnet", "config": config, "run_args": run_args, "args": plain_args(args), "features": feature_names(args.train_data_dir),
              "provenance": feature_provenance(args.train_data_dir), "train_data_dir": str(Path(args.train_data_dir).resolve()),
              "train_ids": train_ids, "val_ids": val_ids}
    last = save_dir / "last.pt"
    history, best, lr_index, resume_state = [], None, 0, None
    if args.resume and last.is_file():
        resume_state = torch.load(last, weights_only=True, map_location="cpu")
        check_resume_flags(last, resume_state["run_args"], run_args)
        history, best, lr_index = resume_state["history"], resume_state["best"], resume_state["lr_index"]
        print(f"resuming {last} after epoch {resume_state['epoch']} of learning rate {args.lr[lr_index]}", file=sys.stderr)

    from tqdm import tqdm

    start = linear_start(args, (video_pool, audio_pool), val, min(512, args.embed_dim))
    for lr_index in range(lr_index, len(args.lr)):
        lr0 = args.lr[lr_index]
        torch.manual_seed(args.seed)
        model = VMNet(**config).to(device)
        if args.standardize:
            model.set_input_stats(video_pool.mean(0), video_pool.std(0), audio_pool.mean(0), audio_pool.std(0))
        if args.init == "cca":
            init_from_cca(model, *start, video_pool, audio_pool)
        optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=lr0)
        scorer = VMNetScorer(model, record, device)
        shuffle = torch.Generator().manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        start_epoch, step, run_best = 0, 0, None
        if resume_state is not None and resume_state["lr_index"] == lr_index:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            torch.set_rng_state(resume_state["rng"])
            shuffle.set_state(resume_state["shuffle_rng"])
            rng.bit_generator.state = resume_state["crop_rng"]
            start_epoch, step, run_best = resume_state["epoch"], resume_state["step"], resume_state["run_best"]
        batch = min(args.batch_size, len(train_ids))
        bar = tqdm(range(start_epoch, args.epochs), desc=f"VM-NET lr {lr0:g}", unit="epoch", initial=start_epoch, total=args.epochs)
        for epoch in bar:
            if run_best and args.patience and val_ids and epoch - run_best["epoch"] >= args.patience:
                break
            t0 = time.time()
            model.train()
            v_all, a_all = crops(rng)
            order = torch.randperm(len(train_ids), generator=shuffle)
            sums = {"total": 0.0, "xy": 0.0, "yx": 0.0, "x": 0.0, "y": 0.0}
            n_batches = len(train_ids) // batch
            for b in range(n_batches):
                lr = lr0 * args.lr_decay ** (step // args.lr_decay_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = order[b * batch:(b + 1) * batch]
                v, a = v_all[idx].to(device), a_all[idx].to(device)
                v_emb, a_emb = model(v, a)
                loss, parts = vmnet_loss(a, v, a_emb, v_emb, args.margin, args.top_k, tuple(args.loss_weights))
                if not torch.isfinite(loss):
                    raise stop_non_finite(save_dir, last, history, f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                sums["total"] += loss.item()
                for k, value in parts.items():
                    sums[k] += value.item()
            row = {"epoch": epoch + 1, "lr_index": lr_index, "train_loss": sums["total"] / n_batches, "lr": lr,
                   **{f"loss_{k}": sums[k] / n_batches for k in ("xy", "yx", "x", "y")},
                   "val_R@1": "", "val_R@10": "", "val_MedR": ""}
            improved_run = improved = True
            if val_ids:
                try:
                    scores = validation_scores(scorer, val)
                except ValueError as error:
                    raise stop_non_finite(save_dir, last, history, f"{error} after epoch {epoch + 1}") from None
                row.update({"val_R@1": scores["R@1"], "val_R@10": scores["R@10"], "val_MedR": scores["MedR"]})
                key = list(selection_key(scores))
                improved_run = run_best is None or key > run_best["key"]
                improved = best is None or key > best["key"]
                if improved_run:
                    run_best = {"epoch": epoch + 1, "key": key}
                if improved:
                    best = {"epoch": epoch + 1, "lr": lr0, "key": key, "R@1": scores["R@1"], "R@10": scores["R@10"]}
            else:
                best = {"epoch": epoch + 1, "lr": lr0}
            row["seconds"] = round(time.time() - t0, 3)
            history.append(row)
            state = {**record, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "step": step, "lr_index": lr_index, "rng": torch.get_rng_state(), "shuffle_rng": shuffle.get_state(),
                     "crop_rng": rng.bit_generator.state, "history": history, "best": best, "run_best": run_best}
            if improved:  # best.pt is for evaluation and retrieval: no optimiser state
                save_checkpoint(save_dir / "best.pt", {k: v for k, v in state.items() if k not in ("optimizer", "crop_rng")})
            save_checkpoint(last, state)
            write_log(save_dir, history, LOG_COLUMNS, plot=epoch + 1 == args.epochs)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_R10=row["val_R@10"] if row["val_R@10"] == "" else f"{row['val_R@10']:.3f}")
        resume_state = None
        bar.close()
    write_log(save_dir, history, LOG_COLUMNS)
    if val_ids:
        print(f"best: learning rate {best['lr']:g}, epoch {best['epoch']} (validation R@1 {best['R@1']:.3f}, R@10 {best['R@10']:.3f})",
              file=sys.stderr)
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
        from vmnet.scorer import load
        from vmr.evaluation import evaluate, print_summary

        try:
            metrics = evaluate(*load(best), best, args.test_data_dir, args.test_csv_path, Path(args.save_dir) / "metrics.json",
                               seed=args.seed)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print_summary(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
