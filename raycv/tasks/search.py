"""Identity search (textbook chapter 7): embed face crops so that photos of one person lie close
together, index a gallery of embeddings, and find who a new photo shows.

The book trains a ResNet-18 to a 512-d embedding under a CosFace head (s = 30, m = 0.4) on PubFig
and reports 74-78 % validation accuracy on known identities; its printed code never trains the CosFace
weights and searches unnormalised vectors by Euclidean distance with a KD-tree. raycv:

- data: procedural identities (raycv/data/faces.py) synthesized by Ray Data; the training split holds
  identities 0..train_identities-1 and every other split holds `val_identities` others, never seen in
  training (open set). Real face crops: an ImageFolder tree PATH/train/<identity>/*, PATH/val/<identity>/*
  whose val identities may (and for an open-set score, should) be new.
- model: CIFAR ResNet-18 (width multiplier; a stride-2 stem for the 64-px photos) -> D-d embedding
  (BatchNorm'd linear), trained through a
  CosFace head whose weights are trained with it, or a plain softmax head (`--head softmax`, the
  baseline). Serving and search use the L2-normalised embedding.
- metrics, on the val split (unseen identities): every image queries all others (leave-one-out);
  recall_at_1 / recall_at_5 = share of queries with a photo of the same identity among the top 1 / 5,
  map = mean average precision over all of the identity's other photos. Queries whose identity has no
  other photo are left out.
- index: raycv/index.py (cosine; FAISS flat or HNSW, scikit-learn brute force without FAISS).
- extras, the plain functions behind raycv/verbs/search.py: `embed_rows` embeds a folder or dataset
  split with a Ray Data actor pool (`raycv search gallery` indexes the result; `raycv search query`
  searches it); `demo_pairs`, `pair_similarity` and `similarity_figure` make the book's
  pair-similarity demo (`raycv search pairs`); `head_configs` are the runs `raycv search compare-heads`
  trains to compare CosFace with softmax on the same data. The Serve app gets POST
  /v1/search/index?id=..., /v1/search/query?k=..., /v1/search/remove?id=... on a persisted gallery.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable

import numpy as np
import ray.data
import torch
import torchmetrics
from torch import nn

from raycv import storage
from raycv.checkpoint import load_model
from raycv.config import TrainConfig
from raycv.data import augment, formats
from raycv.data.faces import identity_traits, render_face
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, decode_image, encode_png, resize_all, to_model_input
from raycv.devices import default_device
from raycv.errors import RaycvError
from raycv.index import EmbeddingIndex
from raycv.models.cifar import CifarResNet
from raycv.models.common import Normalized
from raycv.models.embedding import HEADS, EmbeddingNet, build_head
from raycv.tasks.base import Predict, StateRoute, Task
from raycv.tasks.cards import CARDS

TRAIN_OPTIONS = CARDS["search"].train_options
RECALL_AT = (1, 5)
DEFAULT_K, MAX_K = 5, 1000


# ---------------------------------------------------------------------------------------------------
# Retrieval metrics.
# ---------------------------------------------------------------------------------------------------


def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = RECALL_AT,
                      chunk: int = 1024) -> dict[str, float]:
    """Leave-one-out retrieval among `embeddings` (N, D, L2-normalised) labelled by identity: recall@k
    (a same-identity photo among the top k) and mAP, over queries that have at least one positive."""
    embeddings, labels = embeddings.float(), labels.long()
    n = len(labels)
    hits = {k: 0.0 for k in ks}
    ap_sum, queries = 0.0, 0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=labels.device)
        similarity = embeddings[rows] @ embeddings.T
        similarity[torch.arange(len(rows)), rows] = -float("inf")  # a photo does not find itself
        order = similarity.argsort(dim=1, descending=True)[:, :-1]  # drop self, now last
        relevant = labels[order] == labels[rows, None]
        positives = relevant.sum(dim=1)
        valid = positives > 0
        queries += int(valid.sum())
        for k in ks:
            hits[k] += float(relevant[:, :k].any(dim=1)[valid].sum())
        ranks = torch.arange(1, n, device=labels.device, dtype=torch.float32)
        precision = relevant.cumsum(dim=1) / ranks
        ap = (precision * relevant).sum(dim=1) / positives.clamp(min=1)
        ap_sum += float(ap[valid].sum())
    if queries == 0:
        raise RaycvError(f"no identity among {n} validation images has two photos: recall cannot be measured")
    return {**{f"recall_at_{k}": hits[k] / queries for k in ks}, "map": ap_sum / queries, "queries": float(queries)}


# ---------------------------------------------------------------------------------------------------
# The gallery a Serve app keeps: an index persisted in the state folder.
# ---------------------------------------------------------------------------------------------------


class Gallery:
    """The index of a served model, saved to `folder` after every change."""

    def __init__(self, folder: str, embedding_dim: int):
        self.folder = folder
        if storage.exists(storage.join(folder, "index.json")):
            self.index = EmbeddingIndex.load(folder)
            if self.index.dim != embedding_dim:
                raise RaycvError(f"the index in {folder} holds {self.index.dim}-d embeddings but the model makes "
                                 f"{embedding_dim}-d ones: serve with another --state-dir")
        else:
            self.index = EmbeddingIndex(embedding_dim)

    def save(self) -> None:
        self.index.save(self.folder)


def embedding_dim(checkpoint_meta: dict[str, Any]) -> int:
    """The size of the embeddings a checkpoint (its meta.json) makes."""
    return int(checkpoint_meta["config"]["extra"].get("embedding_dim", TRAIN_OPTIONS["embedding_dim"][0]))


def open_gallery(folder: str, checkpoint_meta: dict[str, Any]) -> Gallery:
    return Gallery(folder, embedding_dim(checkpoint_meta))


def answer_embeddings(answers: list[dict[str, Any]]) -> np.ndarray:
    return np.array([answer["embedding"] for answer in answers], dtype=np.float32)


def parse_ids(query: dict[str, list[str]]) -> dict[str, Any]:
    ids = query.get("id", [])
    if not ids:
        raise RaycvError("missing query parameter 'id': one per image, e.g. ?id=alice (or ?id=a&id=b for two)")
    return {"ids": ids}


def parse_k(query: dict[str, list[str]]) -> dict[str, Any]:
    text = query.get("k", [str(DEFAULT_K)])[-1]
    try:
        k = int(text)
    except ValueError:
        raise RaycvError(f"invalid k={text!r}: expected an integer in 1..{MAX_K}") from None
    if not 1 <= k <= MAX_K:
        raise RaycvError(f"invalid k={k}: expected an integer in 1..{MAX_K}")
    return {"k": k}


def add_to_gallery(gallery: Gallery, answers: list[dict[str, Any]], ids: list[str]) -> dict[str, Any]:
    if len(ids) != len(answers):
        raise RaycvError(f"{len(ids)} id(s) for {len(answers)} image(s): give one ?id= per image, in order")
    gallery.index.add(ids, answer_embeddings(answers))
    gallery.save()
    return {"added": ids, "size": len(gallery.index)}


def search_gallery(gallery: Gallery, answers: list[dict[str, Any]], k: int) -> dict[str, Any]:
    results = gallery.index.query(answer_embeddings(answers), k)
    return {"results": [[{"id": item, "score": round(score, 6)} for item, score in row] for row in results]}


def remove_from_gallery(gallery: Gallery, answers: list[Any], ids: list[str]) -> dict[str, Any]:
    removed = gallery.index.remove(ids)
    gallery.save()
    return {"removed": removed, "size": len(gallery.index)}


# ---------------------------------------------------------------------------------------------------
# Gallery embedding with a Ray Data actor pool.
# ---------------------------------------------------------------------------------------------------


class Embedder:
    """A model replica for Ray Data's actor pool: rows of image bytes to (key, embedding)."""

    def __init__(self, checkpoint_path: str, predict: Predict):
        self.loaded = load_model(checkpoint_path, "search", default_device())
        self.predict = predict

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = "bytes" if "bytes" in batch else "image"
        images = [decode_image(data) for data in batch[column]]
        embeddings = answer_embeddings(self.predict(self.loaded, images))
        return {"key": batch["key"], "embedding": embeddings}


def embed_rows(checkpoint_path: str, rows: ray.data.Dataset, predict: Predict, concurrency: int, batch_size: int,
               cpus_per_actor: float) -> tuple[list[str], np.ndarray]:
    """Embeddings of every row ("key" and image bytes) with `concurrency` model actors."""
    embedded = rows.map_batches(Embedder, fn_constructor_kwargs={"checkpoint_path": checkpoint_path,
                                                                 "predict": predict},
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency),
                                batch_size=batch_size, num_cpus=cpus_per_actor)
    keys, vectors = [], []
    for batch in embedded.iter_batches(batch_size=4096, batch_format="numpy"):
        keys.extend(str(key) for key in batch["key"])
        vectors.append(np.asarray(batch["embedding"], dtype=np.float32))
    return keys, np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)


def folder_gallery_rows(folder: str) -> ray.data.Dataset:
    """The images under `folder` (any depth) to index, keyed by their paths relative to it."""
    folder = storage.absolute(folder).rstrip("/")
    if not storage.is_dir(folder):
        raise RaycvError(f"image folder not found: {folder}")
    files = ray.data.read_binary_files(folder, include_paths=True, file_extensions=[
        extension.lstrip(".") for extension in formats.IMAGE_EXTENSIONS])
    return files.map_batches(lambda batch: {"key": np.array([p[len(folder) + 1:] for p in batch["path"]]),
                                            "bytes": batch["bytes"]}, batch_size=1024)


def split_gallery_rows(split: ray.data.Dataset, data: str) -> ray.data.Dataset:
    """The images of a split of the synthesized search dataset at `data` to index, keyed IDENTITY/ROW."""
    if "id" not in split.schema().names:
        raise RaycvError(f"{data} is not a synthesized search dataset: index an image folder with --images")
    return split.map_batches(
        lambda batch: {"key": np.array([f"{label}/{row}"
                                        for label, row in zip(batch["label"], batch["id"], strict=False)]),
                       "image": batch["image"]}, batch_size=1024)


# ---------------------------------------------------------------------------------------------------
# The book's pair-similarity demo.
# ---------------------------------------------------------------------------------------------------


def demo_pairs(split: ray.data.Dataset, identities: int, per_identity: int = 2) -> tuple[list[np.ndarray], list[int]]:
    """`per_identity` photos each of the first `identities` identities that have that many."""
    chosen: dict[int, list[np.ndarray]] = {}
    for row in split.iter_rows():
        photos = chosen.setdefault(int(row["label"]), [])
        if len(photos) < per_identity:
            photos.append(decode_image(row["image"]))
        full = [label for label, photos in chosen.items() if len(photos) == per_identity]
        if len(full) >= identities:
            break
    labels = [label for label, photos in chosen.items() if len(photos) == per_identity][:identities]
    return ([photo for label in labels for photo in chosen[label]],
            [label for label in labels for _ in range(per_identity)])


def similarity_figure(images: list[np.ndarray], similarity: np.ndarray, names: list[str], out: str) -> None:
    """The pairs table as a picture: the photos along both sides, each cell the cosine similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    figure, axes = plt.subplots(n + 1, n + 1, figsize=(1.1 * (n + 1), 1.1 * (n + 1)))
    for axis in axes.ravel():
        axis.axis("off")
    for i, image in enumerate(images):
        axes[0, i + 1].imshow(image)
        axes[0, i + 1].set_title(names[i], fontsize=6)
        axes[i + 1, 0].imshow(image)
        for j in range(n):
            value = float(similarity[i, j])
            axes[i + 1, j + 1].imshow([[value]], cmap="RdYlGn", vmin=-0.2, vmax=1.0)
            axes[i + 1, j + 1].text(0, 0, f"{value:.2f}", ha="center", va="center", fontsize=7)
    figure.suptitle("cosine similarity of embeddings (same identity: high)", fontsize=8)
    figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(figure)


def pair_similarity(answers: list[dict[str, Any]]) -> np.ndarray:
    """The cosine similarity of every pair of the images `answers` are the predictions for."""
    embeddings = answer_embeddings(answers)
    return embeddings @ embeddings.T


def identity_separation(similarity: np.ndarray, labels: list[int]) -> tuple[float, float, float]:
    """How far apart pair_similarity holds identities: the mean similarity of two photos of one
    identity, that of two different identities, and the highest between different identities."""
    same = np.equal.outer(labels, labels) & ~np.eye(len(labels), dtype=bool)
    different = ~np.equal.outer(labels, labels)
    return float(similarity[same].mean()), float(similarity[different].mean()), float(similarity[different].max())


# ---------------------------------------------------------------------------------------------------
# CosFace against softmax, same data and settings.
# ---------------------------------------------------------------------------------------------------


def head_configs(cfg: TrainConfig) -> dict[str, TrainConfig]:
    """The runs that compare the heads: `cfg` once per head, named BASE-HEAD (BASE: cfg.name or "heads")."""
    base = cfg.name or "heads"
    return {head: cfg.replace(name=f"{base}-{head}", extra={**cfg.extra, "head": head}) for head in HEADS}


def retrieval_scores(metrics: dict[str, float]) -> dict[str, float]:
    """The validation retrieval metrics (recall@k, mAP) among a run's `metrics`, rounded for a table."""
    return {key: round(metrics[f"val_{key}"], 4) for key in (*(f"recall_at_{k}" for k in RECALL_AT), "map")}


# ---------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------


class SearchTask(Task):
    card = CARDS["search"]
    metric = "recall_at_1"
    metric_mode = "max"
    synth_defaults = {"image_size": 64, "train_identities": 1000, "val_identities": 200}
    state_routes = {"index": StateRoute(parse_ids, add_to_gallery), "query": StateRoute(parse_k, search_gallery),
                    "remove": StateRoute(parse_ids, remove_from_gallery, images=False)}

    def open_route_state(self, folder: str, checkpoint_meta: dict[str, Any]) -> Gallery:
        return open_gallery(folder, checkpoint_meta)

    # -- data ----------------------------------------------------------------------------------

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        size, train, val = (int(params[key]) for key in ("image_size", "train_identities", "val_identities"))
        checks = [(size >= 16, "image_size", size, ">= 16"), (train >= 2, "train_identities", train, ">= 2"),
                  (val >= 2, "val_identities", val, ">= 2")]
        for ok, key, value, expected in checks:
            if not ok:
                raise RaycvError(f"invalid {key}={value!r}: expected {expected}")
        return {"image_size": [size, size], "train_identities": train, "val_identities": val}

    def split_params(self, split: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
        """Training photos show identities 0..train_identities-1, every other split the next
        val_identities: disjoint, so validation measures identities the model never saw."""
        train = int(params["train_identities"])
        first, count = (0, train) if split == "train" else (train, int(params["val_identities"]))
        return {**params, "identity_seed": seed, "first_identity": first, "identity_count": count}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        first = int(params.get("first_identity", 0))
        identity = first + int(rng.integers(int(params.get("identity_count", params["train_identities"]))))
        traits = identity_traits(int(params.get("identity_seed", 0)), identity)
        return {"image": encode_png(render_face(rng, traits, int(params["image_size"]))), "label": identity}

    def read(self, path: str, cfg: TrainConfig) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        size = int(self.synth_defaults["image_size"])
        splits, meta = formats.read_image_folder(path, image_size=size, open_set=True)
        names = meta["classes"] + meta["val_classes"]
        return splits, {"image_size": [size, size], "train_identities": len(meta["classes"]),
                        "val_identities": len(meta["val_classes"]), "identity_names": names, "source": path,
                        "format": "imagefolder"}

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        images = [decode_image(data) for data in batch["image"]]
        return {"image": resize_all(images, tuple(meta["image_size"])),
                "label": np.asarray(batch["label"], dtype=np.int64)}

    # -- model ---------------------------------------------------------------------------------

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        options = {name: cfg.extra.get(name, default) for name, (default, _) in TRAIN_OPTIONS.items()}
        if options["head"] not in HEADS:
            raise RaycvError(f"invalid head={options['head']!r}: expected one of {', '.join(HEADS)}")
        dim = options["embedding_dim"]
        if not isinstance(dim, int) or dim < 2:
            raise RaycvError(f"invalid embedding_dim={dim!r}: expected an integer >= 2")
        if not isinstance(options["pooled_size"], int) or options["pooled_size"] < 1:
            raise RaycvError(f"invalid pooled_size={options['pooled_size']!r}: expected an integer >= 1")
        if options["stem_stride"] not in (1, 2):
            raise RaycvError(f"invalid stem_stride={options['stem_stride']!r}: expected 1 or 2")
        if not 0 <= options["embedding_dropout"] < 1:
            raise RaycvError(f"invalid embedding_dropout={options['embedding_dropout']!r}: expected a rate in [0, 1)")
        if options["cosface_scale"] <= 0 or not 0 <= options["cosface_margin"] < 1:
            raise RaycvError(f"invalid CosFace s={options['cosface_scale']}, m={options['cosface_margin']}: "
                             "expected s > 0 and 0 <= m < 1")
        backbone = nn.Sequential(CifarResNet(num_classes=dim, width=cfg.width, pooled_size=options["pooled_size"],
                                             dropout=options["embedding_dropout"], stem_stride=options["stem_stride"]),
                                 nn.BatchNorm1d(dim))
        head = build_head(options["head"], dim, int(meta["train_identities"]), options["cosface_scale"],
                          options["cosface_margin"])
        return Normalized(EmbeddingNet(backbone, head), CIFAR_MEAN, CIFAR_STD)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        # Shifts only: a mirror image is another identity here (a mole or a hair parting changes side).
        side = batch["image"].shape[1]
        return {**batch, "image": augment.random_translate(to_model_input(batch["image"]), pad=max(1, side // 10))}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        logits = model(to_model_input(batch["image"]), batch["label"])
        return nn.functional.cross_entropy(logits.float(), batch["label"])

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        # CatMetric gathers every DDP worker's shard on compute(): retrieval needs the whole split.
        embeddings, labels = torchmetrics.CatMetric().to(device), torchmetrics.CatMetric().to(device)
        for batch in batches:
            embeddings.update(model(to_model_input(batch["image"])).float())
            labels.update(batch["label"].float())
        return retrieval_metrics(embeddings.compute(), labels.compute().long())

    # -- serving -------------------------------------------------------------------------------

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image: its L2-normalised embedding."""
        return [{"embedding": [round(float(value), 6) for value in row]}
                for row in outputs.detach().float().cpu().numpy()]


TASK = SearchTask()
