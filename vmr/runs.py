"""What a training run records about itself and checks before it is trusted: its folder, its flags and
the provenance of the features it was trained on. Shared by both models' train, test and retrieve scripts.
"""
import hashlib
import json
import shutil
from pathlib import Path

RUN_OUTPUTS = ("best.pt", "last.pt", "metrics.json", "retrieval.json", "metrics_recall.png", "train_log.csv",
               "train_log.png", "index.pt")


def prepare_run_dir(save_dir, resume=False, overwrite=False):
    """Create SAVE_DIR for a new run. Results of another run there are an error unless --resume (continue it)
    or --overwrite (they are removed first, and listed on stderr)."""
    import sys

    save_dir = Path(save_dir)
    found = [save_dir / name for name in RUN_OUTPUTS if (save_dir / name).exists()]
    if found and not resume:
        names = ", ".join(p.name for p in found)
        if not overwrite:
            raise ValueError(f"{save_dir} holds results of another run ({names}); use another --save_dir, "
                             "--resume to continue it, or --overwrite to remove them first")
        print(f"--overwrite: removing {names} from {save_dir}", file=sys.stderr)
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir


def check_resume_flags(path, saved, now):
    """Raise ValueError naming every run flag that differs between a checkpoint and this run."""
    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if changed:
        shown = ", ".join(f"--{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{path}: cannot resume with different settings (saved -> now): {shown}")


def feature_provenance(data_dir):
    """{"video": dict or None, "audio": dict or None}: each folder's _feature.json (extract.py, vmnet/prepare.py)."""
    out = {}
    for kind in ("video", "audio"):
        path = Path(data_dir) / kind / "_feature.json"
        out[kind] = json.loads(path.read_text()) if path.is_file() else None
    return out


def describe(prov):
    if prov is None:
        return "no _feature.json"
    options = prov.get("options") or {}
    extra = f", pca {options['pca']}" if "pca" in options else ""
    return f"{prov.get('model')} ({prov.get('weights')} weights, sha256 {str(prov.get('sha256'))[:12]}{extra})"


def differences(found, expected):
    """'; differing: options.seed 1 (checkpoint 0), ...' when two records look the same in describe(), else ''."""
    if found is None or expected is None or describe(found) != describe(expected):
        return ""
    flat = lambda d: {f"{k}.{o}" if isinstance(v, dict) else k: (v[o] if isinstance(v, dict) else v)  # noqa: E731
                      for k, v in d.items() for o in (v if isinstance(v, dict) else [None])}
    a, b = flat(found), flat(expected)
    shown = [f"{k} {a.get(k)!r} (checkpoint {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; differing: " + ", ".join(shown[:5])


def same_feature(a, b):
    """Whether two _feature.json records describe the same feature. options.precision is left out: every
    precision extract.py offers gives rows within the accuracy bar of float32 (tests/test_precision.py), so a
    float32 model reads bfloat16 rows and a library may mix them."""
    def strip(record):
        if not isinstance(record, dict):
            return record
        options = {k: v for k, v in (record.get("options") or {}).items() if k != "precision"}
        return {**{k: v for k, v in record.items() if k != "options"}, **({"options": options} if options else {})}
    return strip(a) == strip(b)


def check_provenance(trained_on, data_dir, what):
    """Raise ValueError when DATA_DIR's features differ in kind or weights from the checkpoint's, whatever their width."""
    found = feature_provenance(data_dir)
    for kind in ("video", "audio"):
        a, b = (trained_on or {}).get(kind), found[kind]
        if not same_feature(a, b):
            raise ValueError(f"{what}: {kind} features of {Path(data_dir) / kind} are {describe(b)}, "
                             f"the checkpoint was trained on {describe(a)}{differences(b, a)}")
    return found


def random_weight_kinds(prov):
    """The kinds ("video", "audio") whose features came from random (test) weights."""
    return [kind for kind in ("video", "audio") if (prov or {}).get(kind) and prov[kind].get("weights") == "random"]


def check_folder(trained_on, kind, folders, what):
    """Refuse feature files from FOLDERS whose _feature.json differs from the checkpoint's record for `kind`
    ("video" or "audio"). A checkpoint written before provenance was recorded is let through with a warning."""
    import sys

    folders = list(dict.fromkeys(Path(f) for f in folders))
    if not folders:
        return
    if trained_on is None:
        print(f"{what}: the checkpoint records no feature provenance (an older checkpoint); not checked", file=sys.stderr)
        return
    expected = trained_on.get(kind)
    for folder in folders:
        path = folder / "_feature.json"
        found = json.loads(path.read_text()) if path.is_file() else None
        if not same_feature(found, expected):
            raise ValueError(f"{what}: {kind} features in {folder} are {describe(found)}, "
                             f"the checkpoint was trained on {describe(expected)}{differences(found, expected)}")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
