"""`raycv search gallery`, `query`, `pairs` and `compare-heads`."""

from __future__ import annotations

import argparse
import json

from raycv.errors import RaycvError

# raycv.index.KINDS, spelled out: importing raycv.index (numpy, pyarrow) for them would cost `raycv search
# --help` more than everything else it loads. tests/test_verbs.py checks that the two agree.
INDEX_KINDS = ("flat", "hnsw")


def add_gallery_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained search checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of images (any depth); an image's id is its path in the folder")
    source.add_argument("--data", help="a search dataset; ids are IDENTITY/ROW")
    parser.add_argument("--split", default="val", help="with --data: the split to index")
    parser.add_argument("--out", required=True, help="the index folder (serve it with --state-dir)")
    parser.add_argument("--kind", default="flat", choices=INDEX_KINDS, help="flat: exact; hnsw: approximate, faster "
                                                                            "on large galleries (needs FAISS)")
    parser.add_argument("--concurrency", type=int, default=2, help="model actors")
    parser.add_argument("--batch-size", type=int, default=256, help="images per model call")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per model actor")


def run_gallery(args: argparse.Namespace) -> int:
    """embed a folder or dataset split into a search index (Ray Data actor pool)"""
    import time

    from raycv import storage
    from raycv.checkpoint import load_model
    from raycv.index import EmbeddingIndex
    from raycv.inference import predict
    from raycv.runtime import init_ray
    from raycv.tasks import search
    from raycv.verbs.files import open_split

    loaded = load_model(args.checkpoint, "search")  # fail fast on a wrong checkpoint
    init_ray()
    started = time.perf_counter()
    if args.images:
        rows = search.folder_gallery_rows(args.images)
    else:
        rows = search.split_gallery_rows(open_split(loaded.task, args.data, args.split), args.data)
    keys, vectors = search.embed_rows(args.checkpoint, rows, predict, args.concurrency, args.batch_size,
                                      args.cpus_per_actor)
    if not keys:
        raise RaycvError("no images found to index")
    index = EmbeddingIndex(search.embedding_dim(loaded.meta), args.kind)
    index.add(keys, vectors)
    index.save(storage.absolute(args.out))
    seconds = time.perf_counter() - started
    print(f"{args.out}: {len(index)} images indexed ({args.kind}) in {seconds:.1f} s "
          f"({len(index) / seconds:.0f} images/s)")
    return 0


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the search checkpoint the index was built with")
    parser.add_argument("--index", required=True, help="an index folder (raycv search gallery --out)")
    # No default here: the query route's (search.DEFAULT_K), read when the verb runs.
    parser.add_argument("-k", type=int, help="results per image")
    parser.add_argument("images", nargs="+", help="query images")


def run_query(args: argparse.Namespace) -> int:
    """find the most similar gallery images to each query image"""
    from raycv import storage
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict, read_image_files
    from raycv.tasks import search

    loaded = load_model(args.checkpoint, "search", default_device())
    gallery = search.open_gallery(storage.absolute(args.index), loaded.meta)
    answers = predict(loaded, read_image_files(args.images))
    k = search.parse_k({} if args.k is None else {"k": [str(args.k)]})["k"]
    for path, row in zip(args.images, search.search_gallery(gallery, answers, k)["results"], strict=False):
        print(f"{path}: {json.dumps(row)}")
    return 0


def add_pairs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained search checkpoint")
    parser.add_argument("--data", help="take photos from this dataset (two per identity)")
    parser.add_argument("--split", default="val", help="with --data: the split (val: identities unseen in training)")
    parser.add_argument("--identities", type=int, default=4, help="with --data: how many identities")
    parser.add_argument("--out", help="also draw the table to this PNG")
    parser.add_argument("images", nargs="*", help="or: image files to compare with each other")


def run_pairs(args: argparse.Namespace) -> int:
    """cosine similarity of every pair of photos (textbook 7: same identity high, others low)"""
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict, read_image_files
    from raycv.report import table
    from raycv.runtime import init_ray
    from raycv.tasks import search
    from raycv.verbs.files import open_split

    loaded = load_model(args.checkpoint, "search", default_device())
    if args.images:
        images, names = read_image_files(args.images), [path.rsplit("/", 1)[-1] for path in args.images]
        labels = None
    elif args.data:
        init_ray()
        images, labels = search.demo_pairs(open_split(loaded.task, args.data, args.split), args.identities)
        names = [f"id {label}" for label in labels]
    else:
        raise RaycvError("give image files to compare, or --data DATASET to take photos from")
    if len(images) < 2:
        raise RaycvError("need at least two images to compare")
    similarity = search.pair_similarity(predict(loaded, images))
    print(table([{"": names[i], **{f"{j}": f"{similarity[i, j]:.3f}" for j in range(len(names))}}
                 for i in range(len(names))], "cosine similarity"))
    if labels is not None:
        same, different, closest = search.identity_separation(similarity, labels)
        print(f"same identity: mean {same:.3f}   different identities: mean {different:.3f} (max {closest:.3f})")
    if args.out:
        search.similarity_figure(images, similarity, names, args.out)
        print(f"wrote {args.out}")
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from raycv.cli import add_config_flags

    parser.add_argument("--data", required=True, help="dataset folder or URI")
    add_config_flags(parser, "search")


def run_compare(args: argparse.Namespace) -> int:
    """train with the CosFace head and with a plain softmax head, and compare open-set retrieval"""
    import time

    from raycv.cli import config_from_args
    from raycv.report import table
    from raycv.runtime import init_ray
    from raycv.tasks import search
    from raycv.train import fit

    cfg = config_from_args("search", args)
    init_ray()
    rows = []
    for head, head_cfg in search.head_configs(cfg).items():
        started = time.perf_counter()
        result = fit(search.TASK, head_cfg, args.data)
        rows.append({"head": head, "epochs": cfg.epochs, "train_s": round(time.perf_counter() - started, 1),
                     **search.retrieval_scores(result.best_metrics), "checkpoint": result.best_checkpoint})
    print(table(rows, f"search heads on {args.data}: retrieval of identities unseen in training"))
    return 0


VERBS = {
    "gallery": (add_gallery_arguments, run_gallery),
    "query": (add_query_arguments, run_query),
    "pairs": (add_pairs_arguments, run_pairs),
    "compare-heads": (add_compare_arguments, run_compare),
}
