"""The linear baselines every evaluation reports next to the models, tuned on validation like the models.

- Ridge CCA on mean-pooled features ("cca"): cosine over the top d canonical directions.
- Time-aligned linear ("aligned_linear"): the same CCA fitted on paired per-second rows; a query and a
  track score the mean cosine of their time-aligned projected rows, truncated to the shorter.

Both choose the number of directions d and the ridge on a validation split of the training ids (never
the test split) with vmr.metrics.selection_key, fit on the same training ids the models learn from.
"""
import numpy as np

from vmr.metrics import normalize_rows, retrieval_metrics, selection_key

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DIMS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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


def pad_sequences(sequences, dims=None):
    """Per-second rows -> (n, T_max, d) float32 with unit rows, zero past each sequence's end, and (n,) lengths."""
    lengths = np.array([len(s) for s in sequences])
    width = sequences[0].shape[1] if dims is None else min(dims, sequences[0].shape[1])
    out = np.zeros((len(sequences), lengths.max(), width), np.float32)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = normalize_rows(s[:, :width])
    return out, lengths


def aligned_scores(query, query_len, gallery, gallery_len, chunk=256):
    """(n, N) mean over t < min(T_q, T_g) of cos(query row t, gallery row t), from pad_sequences outputs.

    Rows past a sequence's end are zero, so one matrix product sums exactly the common seconds.
    """
    width = min(query.shape[1], gallery.shape[1])
    g = gallery[:, :width].reshape(len(gallery), -1)
    out = np.empty((len(query), len(gallery)), np.float32)
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk, :width].reshape(-1, g.shape[1])
        common = np.minimum(query_len[start:start + chunk, None], gallery_len[None, :])
        out[start:start + chunk] = (q @ g.T) / np.maximum(common, 1)
    return out


def _tune(fit, score_val, ridges=RIDGES, dims=DIMS):
    """Grid search: fit(ridge) -> model; score_val(model, d) -> metrics; best (key, ridge, d, model, val block)."""
    best = None
    for ridge in ridges:
        model = fit(ridge)
        for d in [d for d in dims if d <= model.proj_v.shape[1]]:
            val = score_val(model, d)
            key = selection_key(val["video_to_music"])
            if best is None or key > best[0]:
                best = (key, ridge, d, model, val)
    return best


def tuned_cca(train, val, ridges=RIDGES, dims=DIMS):
    """Pooled CCA tuned on validation. train / val: (video (n, Dv), audio (n, Da)) mean-pooled rows.

    Returns a Baseline whose score(video, audio) gives the (n, N) cosine matrix of new items.
    """
    def score_val(model, d):
        return retrieval_metrics(model.project_video(val[0], d), model.project_audio(val[1], d), with_ranks=False)

    stats = moments(train[0], train[1])
    _, ridge, d, model, val_block = _tune(lambda r: CCA(None, None, r, stats), score_val, ridges, dims)
    return Baseline("cca", model, ridge, d, val_block, aligned=False)


def tuned_aligned_linear(train, val, ridges=RIDGES, dims=DIMS):
    """Time-aligned linear baseline tuned on validation. train / val: (list of video (T, Dv), list of audio (T, Da))
    per-second rows, paired (row t of both = the same second). The rows are streamed once into their moments
    (never concatenated), so a split folder's lazy rows fit with the memory of one item."""
    stats = moments(train[0], train[1])

    def score_val(model, d):
        return scores_to_metrics(Baseline("aligned_linear", model, None, d, None, aligned=True).score(*val))

    _, ridge, d, model, val_block = _tune(lambda r: CCA(None, None, r, stats), score_val, ridges, dims)
    return Baseline("aligned_linear", model, ridge, d, val_block, aligned=True)


def scores_to_metrics(scores, relevant=None):
    from vmr.metrics import score_metrics

    return score_metrics(scores, relevant, with_ranks=False)


class Baseline:
    """A fitted, tuned linear baseline: `score(video, audio)` -> (n_video, n_audio) scores of new items."""

    def __init__(self, name, model, ridge, dims, val_block, aligned):
        self.name, self.model, self.ridge, self.dims, self.val_block, self.aligned = name, model, ridge, dims, val_block, aligned

    def score(self, video, audio, chunk=1024):
        """Pooled: cosine of the projected rows. Aligned: blocks of `chunk` tracks by `chunk` queries, each
        projected and padded when its block is scored, so memory holds 2 x chunk items whatever the gallery
        (video / audio may be lazy split rows, read again per block: 1,024 keeps that to a few reads of a
        validation split; 256 made the 20,000-item benchmark's test stage 3x slower)."""
        if not self.aligned:
            pv, pa = self.model.project_video(video, self.dims), self.model.project_audio(audio, self.dims)
            return normalize_rows(pv) @ normalize_rows(pa).T
        out = np.empty((len(video), len(audio)), np.float32)
        for g0 in range(0, len(audio), chunk):
            g_rows = range(g0, min(g0 + chunk, len(audio)))
            g, g_len = pad_sequences([self.model.project_audio(audio[j], self.dims) for j in g_rows])
            for q0 in range(0, len(video), chunk):
                q_rows = range(q0, min(q0 + chunk, len(video)))
                q, q_len = pad_sequences([self.model.project_video(video[i], self.dims) for i in q_rows])
                out[q0:q0 + len(q_rows), g0:g0 + len(g_rows)] = aligned_scores(q, q_len, g, g_len)
        return out

    def settings(self):
        return {"ridge": self.ridge, "dims": self.dims, "chosen_on": "validation split of the train CSV",
                "validation_video_to_music": {k: v for k, v in self.val_block["video_to_music"].items()}}
