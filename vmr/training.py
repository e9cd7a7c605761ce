"""What both models' train.py share: the validation split, checkpoints, the training log, the optimiser's
parameter groups and input standardisation."""
import csv
import io
from pathlib import Path

import numpy as np
import torch

from feature_extraction.atomic import atomic_path, write_text


def split_validation(ids, fraction, seed, groups=None):
    """Seeded (train_ids, val_ids); no validation when it would hold fewer than 2 ids.

    groups: {id: group} (vmr.data.read_groups): all ids of a group land on the same side (whole groups are
    drawn in a seeded order until the validation share is reached), so no track is on both sides.
    """
    n_val = int(round(fraction * len(ids)))
    if n_val < 2 or len(ids) - n_val < 2:
        return list(ids), []
    label = [groups.get(vid, vid) if groups else vid for vid in ids]
    members = {}
    for i, g in enumerate(label):
        members.setdefault(g, []).append(i)
    keys = list(members)
    val = set()
    for k in np.random.default_rng(seed).permutation(len(keys)):
        if len(val) >= n_val:
            break
        val.update(members[keys[k]])
    if len(ids) - len(val) < 2:
        return list(ids), []
    return [v for i, v in enumerate(ids) if i not in val], [v for i, v in enumerate(ids) if i in val]


def training_split(args):
    """(train ids, validation ids) of a train.py run: the train CSV's ids, with --val_csv_path's ids (a published
    validation split, e.g. MGSV-EC's) or a seeded, group-aware --val_fraction of them (DATA/groups.csv) held out.
    An id of the test CSV in either is an error; so is one in both."""
    from vmr.data import check_overlap, data_groups, read_ids

    ids = read_ids(args.train_csv_path)
    if args.test_csv_path:
        check_overlap(ids, read_ids(args.test_csv_path))
    if not args.val_csv_path:
        return split_validation(ids, args.val_fraction, args.seed, data_groups(args.train_data_dir))
    val_ids = read_ids(args.val_csv_path)
    check_overlap(ids, val_ids)
    if args.test_csv_path:
        check_overlap(val_ids, read_ids(args.test_csv_path))
    return ids, val_ids


def save_checkpoint(path, state):
    """torch.save into a temp file renamed onto PATH (a killed run never leaves half a checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def plain_args(args):
    """argparse Namespace -> dict of plain values (paths as strings), loadable with weights_only=True."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def param_groups(model, weight_decay):
    """AdamW groups: weight decay on matrices only; biases, norm gains, ALiBi slopes and other 1-d parameters
    are not decayed towards 0 (decaying a LayerNorm gain or a slope changes what the layer computes)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def standard_deviation(std):
    """Training std for standardisation with a unit that never varied (std 0, or below 1e-6 of the largest)
    set to 1, as documented: such a unit then passes its (tiny) test-time deviation on unchanged instead of
    multiplying it by 1e6."""
    std = torch.as_tensor(np.asarray(std, np.float32))
    floor = 1e-6 * max(float(std.max()), 1e-12)
    return torch.where(std > floor, std, torch.ones_like(std))


def write_log(save_dir, rows, columns, plot=True):
    """train_log.csv (atomically) and, with plot, train_log.png."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(save_dir) / "train_log.csv", buffer.getvalue())
    if plot:
        plot_log(rows, Path(save_dir) / "train_log.png")


def plot_log(history, path):
    """train_log.png: loss and validation recall per epoch, one line per learning rate (vmr.report.plot_training_log)."""
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend (notebooks)

    from vmr.report import plot_training_log

    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    plot_training_log(ax1, ax2, history)
    ax1.set(xlabel="epoch", ylabel="training loss")
    ax2.set(xlabel="epoch", ylabel="validation recall (video -> music)", ylim=(0, 1))
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
