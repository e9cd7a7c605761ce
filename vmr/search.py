"""Top-k search over a library's unit embeddings, shared by both models' retrieve scripts and the benchmarks:
exact (one matrix product and a partial sort) or through a FAISS index (flat, IVF or HNSW, inner product)."""
import numpy as np

FAISS_KINDS = ("flat", "ivf", "hnsw")


def build_faiss(emb, kind, nlist=None, nprobe=8, hnsw_m=32, ef_search=64):
    """A FAISS inner-product index over unit rows: flat (exact), ivf (IVFFlat) or hnsw (HNSWFlat)."""
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    d = emb.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or max(1, min(int(4 * np.sqrt(len(emb))), len(emb) // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown FAISS index {kind!r} (flat, ivf or hnsw)")
    index.add(emb)
    return index


def search(emb, queries, k, index=None):
    """Top-k (indices (q, k), scores (q, k)) by inner product, best first: exact numpy, or a FAISS index
    (which marks missing results with index -1)."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = min(k, len(emb))
    if index is not None:
        scores, idx = index.search(queries, k)
        return idx, scores
    scores = queries @ emb.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable"), 1)
    return order, np.take_along_axis(scores, order, 1)


def add_search_arguments(p):
    """--faiss, --nprobe and --ef_search of a retrieve script."""
    p.add_argument("--faiss", choices=FAISS_KINDS,
                   help="search with a FAISS index instead of exact numpy search (default: exact search)")
    p.add_argument("--nprobe", type=int, default=8, help="--faiss ivf: clusters visited per query (more: slower, closer to exact)")
    p.add_argument("--ef_search", type=int, default=64, help="--faiss hnsw: search breadth (more: slower, closer to exact)")


def index_for(emb, args):
    """The FAISS index a retrieve script's --faiss / --nprobe / --ef_search ask for over `emb`, or None (exact)."""
    return build_faiss(emb, args.faiss, nprobe=args.nprobe, ef_search=args.ef_search) if args.faiss else None
