"""A gallery index for search, on FAISS: L2-normalised features with their pids, camids and paths.

    python -m stafast.search build --features F [--kind flat|ivfpq|hnsw] [--split S] --output I
    python -m stafast.search query --index I --features Q [--topk K] [--exclude-same-camera] --output R.json

    from stafast.search import GalleryIndex
    index = GalleryIndex.build(features, pids, camids, paths, kind="hnsw")   # (N, D) features
    index.add(more, more_pids, more_camids, more_paths)
    dist, rows = index.search(queries, k=10, q_camids=None)   # (Q, k): 2 - 2 cos, gallery rows (-1: none)
    index.save("gallery.idx"); index = GalleryIndex.load("gallery.idx")

Kinds (KINDS): flat is exact; ivfpq (inverted lists over k-means cells, 4-bit product-quantised
codes scanned with SIMD, the best candidates re-ranked with their exact vectors) and hnsw (a
navigable small-world graph) are approximate: `build` measures their recall@10 against the exact
search on the same data (a sample of the gallery as queries, each one's own row left out) and
stores it (`index.recall`).  Distances are 2 - 2 cos, the distance stafast.metrics evaluates.
With the GPU build of FAISS installed, flat and ivfpq search on the GPU (gpu=True).
--features takes a features file (python -m stafast.embed): the gallery (build) or query (query)
rows of --split, or every row of a file without splits (embedded folders / video files).
An index file is a torch.save'd dict: {"format", "kind", "params", "recall", "faiss" (the
serialised FAISS index, uint8), "pids", "camids", "paths"}.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import cli
from .cli import option
from .extras import require
from .errors import UserError
from .features import Features, FeaturesFileError

FORMAT = "stafast.index/1"
MODULE = "stafast.search"


class IndexFileError(UserError, ValueError):
    """A file that is not a stafast.search index."""


class IndexFileNotFound(IndexFileError, FileNotFoundError):
    """No index file where one was given."""


def _faiss():
    return require("faiss", "search", "stafast.search (a gallery index)")


def _ivfpq(faiss, dim: int, n: int, nlist: int | None = None, nprobe: int | None = None, k_factor: int = 64):
    nlist = nlist or max(16, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))
    if dim % 4:
        raise ValueError(f"ivfpq needs a feature size divisible by 4 (4 dimensions per PQ code), got {dim}")
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 4}x4fs,RFlat")
    # k_factor x k candidates re-ranked exactly: at 1,000,000 items the 4-bit codes order the near
    # neighbours too coarsely for 16 x k (recall@10 0.94; 64 x k: 0.99, bench/README.md)
    return index, dict(nlist=nlist, nprobe=nprobe or max(16, nlist // 8), k_factor_rf=k_factor)


def _hnsw(faiss, dim: int, n: int, M: int = 32, ef_construction: int = 80, ef_search: int = 128):
    index = faiss.IndexHNSWFlat(dim, M)
    index.hnsw.efConstruction = ef_construction
    return index, dict(M=M, efConstruction=ef_construction, efSearch=ef_search)


def _flat(faiss, dim: int, n: int):
    return faiss.IndexFlatL2(dim), {}


# kind -> builder(faiss, dim, n, **params) -> (faiss index, its parameters); the defaults reach
# recall@10 >= 0.95 on the synthetic features of bench/large_gallery.py (200,000 and 1,000,000)
KINDS = {"flat": _flat, "ivfpq": _ivfpq, "hnsw": _hnsw}
SEARCH_PARAMS = ("nprobe", "k_factor_rf", "efSearch")  # set on the index before each search


def _vectors(x, what: str, dim: int | None = None) -> np.ndarray:
    """float32 C-contiguous L2-normalised rows of x (a tensor or an array), checked."""
    x = torch.as_tensor(x)
    if x.dim() != 2 or not x.is_floating_point() or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what} must be a floating (n, {dim or 'dim'}) array, got {tuple(x.shape)} {x.dtype}")
    return np.ascontiguousarray(torch.nn.functional.normalize(x.float().cpu(), dim=1).numpy())


class GalleryIndex:
    def __init__(self, index, kind: str, params: dict, pids, camids, paths, recall: float | None = None):
        self.index, self.kind, self.params, self.recall = index, kind, params, recall
        self.pids, self.camids, self.paths = np.asarray(pids, np.int64), np.asarray(camids, np.int64), list(paths)

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, features, pids=None, camids=None, paths=None, kind: str = "flat", gpu: bool = False,
              measure_recall: int = 1000, seed: int = 0, **params) -> "GalleryIndex":
        """An index of `features` (N, D) with their ids (default: pid -1, camera 0, paths "0".."N-1");
        `params` override the kind's defaults (KINDS)."""
        faiss = _faiss()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
        x = _vectors(features, "features")
        index, params = KINDS[kind](faiss, x.shape[1], len(x), **params)
        if not index.is_trained:  # k-means cells and PQ codebooks, on a sample (FAISS wants >= 39 per cell)
            sample = np.random.default_rng(seed).permutation(len(x))[:max(64 * params.get("nlist", 1), 10_000)]
            index.train(x[np.sort(sample)])
        out = cls(index, kind, params, [], [], [])
        out.add(x, pids, camids, paths)
        if gpu:
            out.to_gpu()
        if kind != "flat" and measure_recall:
            out.recall = out.measure_recall(x, min(measure_recall, len(x)), k=10, seed=seed)
        return out

    def add(self, features, pids=None, camids=None, paths=None) -> None:
        """Append gallery items (their rows follow the present ones)."""
        x = _vectors(features, "features", self.index.d)
        n = len(x)
        pids = np.full(n, -1) if pids is None else np.asarray(pids).ravel()
        camids = np.zeros(n, np.int64) if camids is None else np.asarray(camids).ravel()
        paths = [str(len(self) + i) for i in range(n)] if paths is None else list(paths)
        if not len(pids) == len(camids) == len(paths) == n:
            raise ValueError(f"{n} features need as many pids, camids and paths, got {len(pids)}, {len(camids)}, "
                             f"{len(paths)}")
        self.index.add(x)
        self.pids, self.camids = np.concatenate([self.pids, pids]), np.concatenate([self.camids, camids])
        self.paths += paths

    def search(self, queries, k: int = 10, q_camids=None) -> tuple[np.ndarray, np.ndarray]:
        """(distances 2 - 2 cos, gallery rows), each (Q, k), nearest first; with q_camids, gallery items
        of the query's camera are left out (rows -1 / distance inf where fewer than k remain)."""
        x = _vectors(queries, "queries", self.index.d)
        self._set_search_params()
        if q_camids is None:
            return self.index.search(x, min(k, len(self)))
        q_camids = np.asarray(q_camids).ravel()
        if len(q_camids) != len(x):
            raise ValueError(f"{len(x)} queries need as many q_camids, got {len(q_camids)}")
        fetch = k
        while True:  # fetch more until k items of other cameras are left, or the gallery is exhausted
            dist, rows = self.index.search(x, min(fetch, len(self)))
            other = (rows >= 0) & (self.camids[np.maximum(rows, 0)] != q_camids[:, None])
            if other.sum(1).min() >= k or fetch >= len(self):
                break
            fetch *= 4
        order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # the kept items, in their order
        keep = np.take_along_axis(other, order, 1)
        return (np.where(keep, np.take_along_axis(dist, order, 1), np.inf),
                np.where(keep, np.take_along_axis(rows, order, 1), -1))

    def measure_recall(self, gallery, n: int = 1000, k: int = 10, seed: int = 0) -> float:
        """recall@k of this index against the exact search on `gallery` (its vectors, in row order):
        n of them as queries, each one's own row left out of both rankings."""
        faiss = _faiss()
        x = _vectors(gallery, "gallery", self.index.d)
        queries = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
        exact = faiss.IndexFlatL2(x.shape[1])
        exact.add(x)
        want = exact.search(x[queries], k + 1)[1]
        self._set_search_params()
        got = self.index.search(x[queries], k + 1)[1]
        hits = [len((set(w) - {q}) & (set(g) - {q})) / min(k, len(set(w) - {q}) or 1)
                for q, w, g in zip(queries, want, got)]
        return float(np.mean(hits))

    def _set_search_params(self) -> None:
        faiss = _faiss()
        space = faiss.GpuParameterSpace() if _on_gpu(self.index) else faiss.ParameterSpace()
        for name in SEARCH_PARAMS:
            if name in self.params and not (name == "efSearch" and _on_gpu(self.index)):
                space.set_index_parameter(self.index, name, self.params[name])

    def to_gpu(self) -> None:
        """Search on all GPUs (FAISS's GPU build; flat and ivfpq: HNSW has no GPU version)."""
        faiss = _faiss()
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            raise RuntimeError("gpu=True needs the GPU build of FAISS and a GPU (pip install faiss-gpu)")
        if self.kind == "hnsw":
            raise ValueError("the hnsw index has no GPU version in FAISS: use flat or ivfpq on the GPU")
        self.index = faiss.index_cpu_to_all_gpus(self.index)

    def save(self, path: str) -> None:
        faiss = _faiss()
        cpu = faiss.index_gpu_to_cpu(self.index) if _on_gpu(self.index) else self.index
        torch.save({"format": FORMAT, "kind": self.kind, "params": self.params, "recall": self.recall,
                    "faiss": torch.from_numpy(faiss.serialize_index(cpu)), "pids": torch.from_numpy(self.pids),
                    "camids": torch.from_numpy(self.camids), "paths": self.paths}, path)

    @classmethod
    def load(cls, path: str, gpu: bool = False) -> "GalleryIndex":
        faiss = _faiss()
        try:
            d = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise IndexFileNotFound(f"index file {path} does not exist") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IndexFileError(f"{path} is not a stafast.search index (format {FORMAT!r}); build one with "
                             "python -m stafast.search build")
        out = cls(faiss.deserialize_index(d["faiss"].numpy()), d["kind"], d["params"], d["pids"].numpy(),
                  d["camids"].numpy(), d["paths"], d["recall"])
        if gpu:
            out.to_gpu()
        return out


def _on_gpu(index) -> bool:
    return "Gpu" in type(index).__name__


def rows_of(path: str, split, part: str) -> Features:
    """The `part` rows of `split` of the features file `path`, or all of them when it has no splits."""
    features = Features.load(path)
    if not features.splits:
        return features
    split = sorted(features.splits)[0] if split is None else split
    if split not in features.splits:
        raise FeaturesFileError(f"{path} holds splits {sorted(features.splits)}, not {split}")
    return features.part(split, part)


@dataclass(kw_only=True)
class BuildConfig:
    """Index the gallery of a features file."""
    features: str = option(help="a features file (python -m stafast.embed)")
    kind: str = option("flat", "index kind", choices=KINDS)
    split: int | None = option(None, "which split's gallery (default: the first; every row of a file without splits)")
    gpu: bool = option(False, "build on the GPU (FAISS GPU build; flat and ivfpq)")
    output: str = option(help="the index file to write")


@dataclass(kw_only=True)
class QueryConfig:
    """The top-k gallery items of each query of a features file."""
    index: str = option(help="an index file (build)")
    features: str = option(help="a features file (python -m stafast.embed)")
    split: int | None = option(None, "which split's queries (default: the first; every row of a file without splits)")
    topk: int = option(10, "gallery items per query")
    exclude_same_camera: bool = option(False, "leave out gallery items of the query's camera")
    gpu: bool = option(False, "search on the GPU (FAISS GPU build; flat and ivfpq)")
    output: str = option(help="the results (JSON)")

    def __post_init__(self):
        if self.topk < 1:
            raise ValueError(f"--topk must be at least 1, got {self.topk}")


COMMANDS = {"build": BuildConfig, "query": QueryConfig}


def main(argv=None) -> dict:
    a = cli.parse(COMMANDS, argv, module=MODULE, description=__doc__)
    return build(a) if isinstance(a, BuildConfig) else query(a)


def build(a: BuildConfig) -> dict:
    g = rows_of(a.features, a.split, "gallery")
    index = GalleryIndex.build(g.features, g.pids, g.camids, g.paths, kind=a.kind, gpu=a.gpu)
    index.save(a.output)
    recall = "" if index.recall is None else f", recall@10 {index.recall:.3f} against the exact search"
    print(f"{a.kind} index of {len(index)} gallery items{recall}: {a.output}")
    return {"kind": a.kind, "size": len(index), "recall@10": index.recall, "params": index.params}


def query(a: QueryConfig) -> dict:
    index = GalleryIndex.load(a.index, gpu=a.gpu)
    qs = rows_of(a.features, a.split, "query")
    dist, rows = index.search(qs.features, a.topk, qs.camids.numpy() if a.exclude_same_camera else None)
    results = {"index": a.index, "kind": index.kind, "recall@10": index.recall, "topk": a.topk,
               "exclude_same_camera": a.exclude_same_camera,
               "queries": [{"path": qs.paths[i], "pid": int(qs.pids[i]), "camid": int(qs.camids[i]),
                            "matches": [{"path": index.paths[r], "pid": int(index.pids[r]),
                                         "camid": int(index.camids[r]), "distance": float(d)}
                                        for r, d in zip(rows[i], dist[i]) if r >= 0]} for i in range(len(qs))]}
    with open(a.output, "w") as f:
        json.dump(results, f, indent=1)
    print(f"top-{a.topk} of {len(qs)} queries in a {index.kind} index of {len(index)}: {a.output}")
    return results


if __name__ == "__main__":
    cli.run(main, MODULE)
