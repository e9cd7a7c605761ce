"""The linear baselines every evaluation reports next to the models, tuned on validation like the models.

- Ridge CCA on mean-pooled features ("cca"): cosine over the top d canonical directions.
- Time-aligned linear ("aligned_linear"): the same CCA fitted on paired per-second rows; a query and a
  track score the mean cosine of their time-aligned projected rows, truncated to the shorter.

Both choose the number of directions d and the ridge on a validation split of the training ids (never
the test split) with vmr.metrics.selection_key, fit on the same training ids the models learn from.
"""
import sys

import numpy as np

from vmr.data import Gallery, paired_gallery
from vmr.metrics import normalize_rows, selection_key
from vmr.moments import window_means
from vmr.scorer import AlignedScoring, Scorer, gallery_recall, pack_sequences, pooled_vectors, score_rows, track_sequence

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DIMS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ALIGNED_DIMS = DIMS[1:]  # one direction makes every per-second cosine +-1: no ranking left to average
MIN_VALIDATION = 20  # fewer validation items: no tuning, the defaults below and a warning
SMALL_VALIDATION_DIMS = 16


def _inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def _blocks(rows, block=65536):
    """float64 blocks of an (n, D) array, or of the rows of a sequence of (T_i, D) arrays (read one at a time)."""
    if isinstance(rows, np.ndarray):
        for first in range(0, len(rows), block):
            yield np.asarray(rows[first:first + block], np.float64)
    else:
        for x in rows:
            yield np.asarray(x, np.float64)


def moments(video_rows, audio_rows):
    """(n, mean_v, mean_a, cov_vv, cov_aa, cov_va) of paired rows, in two streaming passes (float64).

    video_rows / audio_rows: (n, D) arrays, or sequences of per-item (T_i, D) arrays (e.g. a split folder's
    vmr.splits.LazyRows), never concatenated: memory is one item (or 65,536 rows) and the D x D sums."""
    n, sum_v, sum_a = 0, 0.0, 0.0
    for xv, xa in zip(_blocks(video_rows), _blocks(audio_rows)):
        n += len(xv)
        sum_v, sum_a = sum_v + xv.sum(0), sum_a + xa.sum(0)
    mean_v, mean_a = sum_v / n, sum_a / n
    cvv = caa = cva = 0.0
    for xv, xa in zip(_blocks(video_rows), _blocks(audio_rows)):
        xv, xa = xv - mean_v, xa - mean_a
        cvv, caa, cva = cvv + xv.T @ xv, caa + xa.T @ xa, cva + xv.T @ xa
    d = max(n - 1, 1)
    return n, mean_v, mean_a, cvv / d, caa / d, cva / d


class CCA:
    """Ridge CCA fitted on paired rows: whiten each view (covariance + ridge * mean eigenvalue * I), SVD of
    the whitened cross-covariance. project_video / project_audio give all min(Dv, Da) directions, strongest first.
    video_rows / audio_rows: (n, D) arrays or sequences of per-item (T_i, D) arrays (see moments); or pass
    stats=moments(...) to fit several ridges on one pass over the rows."""

    def __init__(self, video_rows, audio_rows, ridge, stats=None):
        _, mean_v, mean_a, cvv, caa, cva = stats if stats is not None else moments(video_rows, audio_rows)

        def ridge_cov(c):
            return c + ridge * max(np.trace(c) / len(c), 1e-12) * np.eye(len(c))

        wv, wa = _inv_sqrt(ridge_cov(cvv)), _inv_sqrt(ridge_cov(caa))
        u, self.correlations, vt = np.linalg.svd(wv @ cva @ wa)
        d = min(u.shape[1], vt.shape[0])
        self.proj_v, self.proj_a = (wv @ u[:, :d]).astype(np.float32), (wa @ vt.T[:, :d]).astype(np.float32)
        self.mean_v, self.mean_a = mean_v.astype(np.float32), mean_a.astype(np.float32)

    def project_video(self, rows, dims=None):
        return (np.asarray(rows, np.float32) - self.mean_v) @ self.proj_v[:, :dims]

    def project_audio(self, rows, dims=None):
        return (np.asarray(rows, np.float32) - self.mean_a) @ self.proj_a[:, :dims]


def _tune(fit, score_val, ridges, dims, n_val, what):
    """Grid search: fit(ridge) -> model; score_val(model, d) -> metrics; best (ridge, d, model, val block).

    With fewer than MIN_VALIDATION validation items the choice would be noise (the demo's 2 clips chose one
    direction, and one direction makes every per-second cosine +-1): ridge 1e-2 and the most directions up to
    SMALL_VALIDATION_DIMS are used instead, with a warning."""
    if n_val < MIN_VALIDATION:
        model = fit(1e-2)
        d = max(d for d in dims if d <= min(SMALL_VALIDATION_DIMS, model.proj_v.shape[1]))
        print(f"warning: {what}: {n_val} validation items are too few to choose the ridge and the number of directions "
              f"(fewer than {MIN_VALIDATION}); using ridge 1e-2 and {d} directions", file=sys.stderr)
        return 1e-2, d, model, score_val(model, d)
    best = None
    for ridge in ridges:
        model = fit(ridge)
        for d in [d for d in dims if d <= model.proj_v.shape[1]]:
            val = score_val(model, d)
            key = selection_key(val["video_to_music"])
            if best is None or key > best[0]:
                best = (key, ridge, d, model, val)
    return best[1:]


def _val_metrics(baseline, val):
    """{"video_to_music": block} of a baseline on validation: a vmr.data.Gallery, or (videos, tracks) pairs."""
    val = val if isinstance(val, Gallery) else paired_gallery(*val)
    return {"video_to_music": gallery_recall(BaselineScorer(baseline), val)[0]}


def tuned_cca(train, val, ridges=RIDGES, dims=DIMS):
    """Pooled CCA tuned on validation. train: (video (n, Dv), audio (n, Da)) mean-pooled rows; val: (videos, tracks),
    sequences of per-second rows (pooled by the scorer, as every evaluation does) or (n, D) mean rows."""
    stats = moments(train[0], train[1])
    ridge, d, model, val_block = _tune(lambda r: CCA(None, None, r, stats),
                                       lambda m, d: _val_metrics(Baseline("cca", m, None, d, None, False), val),
                                       ridges, dims, _count(val), "tuned CCA")
    return Baseline("cca", model, ridge, d, val_block, aligned=False)


def tuned_aligned_linear(train, val, ridges=RIDGES, dims=ALIGNED_DIMS):
    """Time-aligned linear baseline tuned on validation. train / val: (list of video (T, Dv), list of audio (T, Da))
    per-second rows, paired (row t of both = the same second). The training rows are streamed once into their
    moments (never concatenated), so a split folder's lazy rows fit with the memory of one item."""
    stats = moments(train[0], train[1])
    ridge, d, model, val_block = _tune(lambda r: CCA(None, None, r, stats),
                                       lambda m, d: _val_metrics(Baseline("aligned_linear", m, None, d, None, True), val),
                                       ridges, dims, _count(val), "aligned linear")
    return Baseline("aligned_linear", model, ridge, d, val_block, aligned=True)


class Baseline:
    """A fitted, tuned linear baseline (its scorer: BaselineScorer)."""

    def __init__(self, name, model, ridge, dims, val_block, aligned):
        self.name, self.model, self.ridge, self.dims, self.val_block, self.aligned = name, model, ridge, dims, val_block, aligned

    def score(self, video, audio):
        """(n_video, n_audio) scores of new items, ranked by BaselineScorer (each item's whole rows)."""
        scorer = BaselineScorer(self)
        return score_rows(scorer, scorer.embed_queries(video), scorer.embed_tracks(audio))

    def settings(self):
        return {"ridge": self.ridge, "dims": self.dims, "chosen_on": "validation split of the train CSV",
                "validation_video_to_music": {k: v for k, v in self.val_block["video_to_music"].items()}}


class BaselineScorer(AlignedScoring, Scorer):
    """A baseline ranked by the same code as the models (vmr.scorer): pooled CCA = cosine of the projected
    mean rows; aligned linear = the aligned scoring of the projected, unit per-second rows (every pair)."""

    def __init__(self, baseline):
        self.baseline, self.kind = baseline, baseline.name
        self.name = {"cca": "tuned CCA", "aligned_linear": "aligned linear"}[baseline.name]
        self.scoring = "aligned" if baseline.aligned else "pooled"

    def _project(self, rows, project):
        """Unit per-second projections (aligned), or the unit projection of each item's mean row (pooled; rows may
        also be an (n, D) array of mean rows)."""
        if self.baseline.aligned:
            return [normalize_rows(project(r, self.baseline.dims)) for r in rows]
        return normalize_rows(project(np.stack([np.asarray(r, np.float32).mean(0) for r in _items(rows)]), self.baseline.dims))

    def embed_tracks(self, rows, paths=None):
        out = self._project(rows, self.baseline.model.project_audio)
        if self.baseline.aligned:
            return {"pooled": pooled_vectors(out), **pack_sequences(out)}
        return {"pooled": out, **pack_sequences([np.asarray(r, np.float32) for r in _items(rows)], "rows")}

    def window_vectors(self, library, j, length):
        """Pooled CCA: the projection of the mean rows of every window of `length` seconds."""
        return self.baseline.model.project_audio(window_means(track_sequence(library, j, "rows"), length), self.baseline.dims)

    def embed_queries(self, rows, boundaries=None):
        out = self._project(rows, self.baseline.model.project_video)
        return {"pooled": pooled_vectors(out), "seq": out} if self.baseline.aligned else {"pooled": out}


def _count(val):
    return len(val.videos) if isinstance(val, Gallery) else len(val[0])


def _items(rows):
    """Per-item rows: an (n, D) array of mean rows is n one-second items."""
    return rows[:, None] if isinstance(rows, np.ndarray) and rows.ndim == 2 else rows
