"""A nearest-neighbour index of L2-normalised embeddings, keyed by string ids: add, remove, query,
save, load.

Similarity is the cosine (the inner product of unit vectors), what CosFace trains for; vectors are
normalised on the way in, queries too. Two kinds:

    flat   exact search. FAISS's IndexFlatIP when FAISS is installed, else scikit-learn's brute-force
           NearestNeighbors (cosine metric). Right for galleries up to some ten thousand vectors.
    hnsw   approximate search on a FAISS HNSW graph (inner product): many times faster on large
           galleries, at a recall against exact search that jobs/bench.py measures. Needs FAISS.

Storage is append-only "slots": the i-th vector ever added sits in slot i of the FAISS index, and
removing an id marks its slot dead (searches skip dead slots with an IDSelector, since FAISS's HNSW
cannot delete). Dead slots are compacted away once they are a quarter of the index. `save` writes
the vectors and ids (numpy .npz, read with allow_pickle=False) and, for hnsw, the graph itself, so
loading a large index does not rebuild it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np

from raycv import storage
from raycv.errors import RaycvError

KINDS = ("flat", "hnsw")
INDEX_FILE, GRAPH_FILE, INFO_FILE = "index.npz", "index.hnsw", "index.json"
FORMAT_VERSION = 1
COMPACT_AT = 0.25  # share of dead slots that triggers compaction
MAX_ID_CHARS = 256


def faiss_module():
    """FAISS if it is installed, else None (the flat kind then uses scikit-learn)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class EmbeddingIndex:
    def __init__(self, dim: int, kind: str = "flat", hnsw_neighbors: int = 32, hnsw_ef_search: int = 64,
                 hnsw_ef_construction: int = 80, backend: str = "auto"):
        """`dim`: embedding size. `kind`: flat (exact) or hnsw (approximate). `backend`: auto (FAISS
        when installed), faiss or sklearn (flat only)."""
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise RaycvError(f"invalid embedding dimension {dim!r}: expected an integer >= 1")
        if kind not in KINDS:
            raise RaycvError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
        faiss = faiss_module()
        if backend == "auto":
            backend = "faiss" if faiss is not None else "sklearn"
        if backend not in ("faiss", "sklearn"):
            raise RaycvError(f"unknown index backend {backend!r}; valid: auto, faiss, sklearn")
        if backend == "faiss" and faiss is None:
            raise RaycvError("the faiss backend needs FAISS: pip install faiss-cpu")
        if kind == "hnsw" and backend != "faiss":
            raise RaycvError("index kind 'hnsw' needs FAISS (pip install faiss-cpu); use kind 'flat' without it")
        self.dim, self.kind, self.backend = int(dim), kind, backend
        self.hnsw_neighbors, self.hnsw_ef_search, self.hnsw_ef_construction = (hnsw_neighbors, hnsw_ef_search,
                                                                               hnsw_ef_construction)
        self._buffer = np.zeros((0, self.dim), dtype=np.float32)  # one row per slot, dead ones included, then spare
        self._ids: list[str | None] = []  # slot -> id, None when removed
        self._slot_of: dict[str, int] = {}
        self._searcher = None  # FAISS index over all slots, or a fitted NearestNeighbors over live ones
        self._live_slots: np.ndarray | None = None  # sklearn: row of the fitted model -> slot
        self._alive_bitmap: np.ndarray | None = None  # FAISS: live slots as a bitmap, while some are dead
        self._lock = threading.RLock()  # one change or search at a time

    @property
    def _vectors(self) -> np.ndarray:
        return self._buffer[:len(self._ids)]

    # -- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, item: str) -> bool:
        return item in self._slot_of

    @property
    def ids(self) -> list[str]:
        return [item for item in self._ids if item is not None]

    def vector(self, item: str) -> np.ndarray:
        if item not in self._slot_of:
            raise RaycvError(f"id {item!r} is not in the index")
        return self._vectors[self._slot_of[item]].copy()

    def info(self) -> dict[str, Any]:
        return {"size": len(self), "dim": self.dim, "kind": self.kind, "backend": self.backend,
                "dead_slots": len(self._ids) - len(self)}

    # -- changing -------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: Any) -> None:
        """Add `vectors` (N, dim) under `ids` (N distinct strings not yet in the index). Nothing is
        added unless everything is valid."""
        ids = [self._check_id(item) for item in ids]
        vectors = self._unit_rows(vectors, "vectors")
        if len(ids) != len(vectors):
            raise RaycvError(f"{len(ids)} ids for {len(vectors)} vectors: give one id per vector")
        seen: set[str] = set()
        repeated = sorted({item for item in ids if item in seen or seen.add(item)})
        if repeated:
            raise RaycvError(f"duplicate id(s) in one request: {', '.join(map(repr, repeated[:5]))}")
        with self._lock:
            taken = [item for item in ids if item in self._slot_of]
            if taken:
                raise RaycvError(f"id(s) already in the index: {', '.join(map(repr, taken[:5]))}"
                                 f"{' ...' if len(taken) > 5 else ''}; remove them first to replace them")
            first = len(self._ids)
            if first + len(ids) > len(self._buffer):  # grow geometrically: one-by-one adds stay O(1) each
                grown = np.zeros((max(first + len(ids), 2 * len(self._buffer), 1024), self.dim), dtype=np.float32)
                grown[:first] = self._buffer[:first]
                self._buffer = grown
            self._buffer[first:first + len(ids)] = vectors
            self._ids.extend(ids)
            self._alive_bitmap = None
            self._slot_of.update((item, first + offset) for offset, item in enumerate(ids))
            if self.backend == "faiss" and self._searcher is not None:
                self._searcher.add(vectors)  # FAISS slots follow insertion order
            else:
                self._searcher = None

    def remove(self, ids: Iterable[str]) -> int:
        """Remove `ids` (all must be present); returns how many were removed."""
        ids = list(dict.fromkeys(ids))
        with self._lock:
            missing = [item for item in ids if item not in self._slot_of]
            if missing:
                raise RaycvError(f"id(s) not in the index: {', '.join(map(repr, missing[:5]))}"
                                 f"{' ...' if len(missing) > 5 else ''}")
            for item in ids:
                self._ids[self._slot_of.pop(item)] = None
            self._alive_bitmap = None
            if self.backend == "sklearn":
                self._searcher = None
            dead = len(self._ids) - len(self._slot_of)
            if dead and dead >= COMPACT_AT * len(self._ids):
                self._compact()
        return len(ids)

    def _compact(self) -> None:
        live = np.array([slot for slot, item in enumerate(self._ids) if item is not None], dtype=np.int64)
        self._buffer = self._buffer[live] if len(live) else np.zeros((0, self.dim), dtype=np.float32)
        self._ids = [self._ids[slot] for slot in live]
        self._slot_of = {item: slot for slot, item in enumerate(self._ids)}
        self._searcher = None

    # -- searching ------------------------------------------------------------------------------

    def query(self, vectors: Any, k: int = 10) -> list[list[tuple[str, float]]]:
        """The `k` most similar ids to each query vector, best first, as (id, cosine similarity)."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise RaycvError(f"invalid k={k!r}: expected an integer >= 1")
        queries = self._unit_rows(vectors, "query vectors")
        with self._lock:
            if not self._slot_of:
                raise RaycvError("the gallery is empty: add embeddings to the index before querying it")
            k = min(int(k), len(self._slot_of))
            scores, slots = self._search(queries, k)
            names = self._ids
        return [[(names[slot], float(score)) for score, slot in zip(row_scores, row_slots, strict=False) if slot >= 0]
                for row_scores, row_slots in zip(scores, slots, strict=False)]

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._searcher is None:
            self._searcher = self._build()
        if self.backend == "sklearn":
            distances, rows = self._searcher.kneighbors(queries, n_neighbors=k)
            return 1.0 - distances, self._live_slots[rows]
        faiss = faiss_module()
        params = faiss.SearchParametersHNSW(efSearch=max(self.hnsw_ef_search, k)) if self.kind == "hnsw" else None
        if len(self._slot_of) < len(self._ids):  # skip removed slots
            if self._alive_bitmap is None:
                self._alive_bitmap = np.packbits(np.array([item is not None for item in self._ids]), bitorder="little")
            # FAISS keeps only a pointer to the bitmap: self._alive_bitmap holds it for the search.
            selector = faiss.IDSelectorBitmap(len(self._ids), faiss.swig_ptr(self._alive_bitmap))
            params = params or faiss.SearchParameters()
            params.sel = selector
            return self._searcher.search(queries, k, params=params)
        return self._searcher.search(queries, k, params=params)

    def _build(self):
        if self.backend == "sklearn":
            from sklearn.neighbors import NearestNeighbors

            self._live_slots = np.array([slot for slot, item in enumerate(self._ids) if item is not None])
            return NearestNeighbors(algorithm="brute", metric="cosine").fit(self._vectors[self._live_slots])
        faiss = faiss_module()
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.hnsw_ef_construction
        else:
            index = faiss.IndexFlatIP(self.dim)
        if len(self._vectors):
            index.add(self._vectors)
        return index

    # -- checks ---------------------------------------------------------------------------------

    @staticmethod
    def _check_id(item: Any) -> str:
        if not isinstance(item, str) or not item or len(item) > MAX_ID_CHARS:
            raise RaycvError(f"invalid id {item!r}: expected a non-empty string of at most {MAX_ID_CHARS} characters")
        return item

    def _unit_rows(self, vectors: Any, what: str) -> np.ndarray:
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise RaycvError(f"{what} must be numbers, shaped (N, {self.dim})") from None
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise RaycvError(f"{what} of shape {array.shape} do not match the index: expected (N, {self.dim}), "
                             f"embeddings of dimension {self.dim}")
        if len(array) == 0:
            raise RaycvError(f"no {what} given")
        if not np.isfinite(array).all():
            raise RaycvError(f"{what} contain NaN or infinite values")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if (norms == 0).any():
            raise RaycvError(f"{what} contain an all-zero vector, which has no direction to compare")
        return np.ascontiguousarray(array / norms, dtype=np.float32)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, folder: str) -> None:
        """Write the index to `folder` (local path or storage URI), replacing what was there; each
        file is written to a temporary name and renamed, so a crash leaves the previous version."""
        with self._lock:
            ids = np.array([item if item is not None else "" for item in self._ids], dtype=np.str_)
            alive = np.array([item is not None for item in self._ids], dtype=bool)
            files = {INFO_FILE: json.dumps({"format": FORMAT_VERSION, "dim": self.dim, "kind": self.kind,
                                            "size": len(self), "hnsw_neighbors": self.hnsw_neighbors,
                                            "hnsw_ef_search": self.hnsw_ef_search,
                                            "hnsw_ef_construction": self.hnsw_ef_construction}, indent=2).encode()}
            buffer = _npz_bytes(vectors=self._vectors, ids=ids, alive=alive)
            files[INDEX_FILE] = buffer
            if self.kind == "hnsw" and len(self._ids):
                if self._searcher is None:
                    self._searcher = self._build()
                files[GRAPH_FILE] = faiss_module().serialize_index(self._searcher).tobytes()
        # The info file last: a reader trusts the folder once it names a complete set.
        for name in sorted(files, key=lambda name: name == INFO_FILE):
            _write_atomically(storage.join(folder, name), files[name])

    @classmethod
    def load(cls, folder: str, backend: str = "auto") -> EmbeddingIndex:
        info_path = storage.join(folder, INFO_FILE)
        if not storage.exists(info_path):
            raise RaycvError(f"no index in {folder} (expected {INFO_FILE} and {INDEX_FILE})")
        info = json.loads(storage.read_text(info_path))
        if info.get("format") != FORMAT_VERSION:
            raise RaycvError(f"index {folder} has format {info.get('format')!r}; this raycv reads {FORMAT_VERSION}")
        index = cls(info["dim"], info["kind"], info["hnsw_neighbors"], info["hnsw_ef_search"],
                    info["hnsw_ef_construction"], backend)
        import io

        with np.load(io.BytesIO(storage.read_bytes(storage.join(folder, INDEX_FILE))), allow_pickle=False) as data:
            vectors, ids, alive = data["vectors"], data["ids"], data["alive"]
        if vectors.shape[1:] != (index.dim,) or not len(vectors) == len(ids) == len(alive):
            raise RaycvError(f"index {folder} is corrupt: vectors {vectors.shape}, {len(ids)} ids, dim {index.dim}")
        index._buffer = vectors.astype(np.float32)
        index._ids = [str(item) if keep else None for item, keep in zip(ids, alive, strict=False)]
        index._slot_of = {item: slot for slot, item in enumerate(index._ids) if item is not None}
        graph_path = storage.join(folder, GRAPH_FILE)
        if index.kind == "hnsw" and len(vectors) and storage.exists(graph_path):
            graph = faiss_module().deserialize_index(np.frombuffer(storage.read_bytes(graph_path), dtype=np.uint8))
            if graph.ntotal == len(vectors):  # else the graph is stale: rebuilt on the first query
                index._searcher = graph
        return index


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _write_atomically(path: str, data: bytes) -> None:
    if storage.is_uri(path):  # object stores replace a key in one put
        fs, inner = storage.resolve(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as stream:
            stream.write(data)
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, delete=False, prefix=".tmp-") as handle:
        handle.write(data)
    os.replace(handle.name, path)
