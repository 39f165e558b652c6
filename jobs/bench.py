"""raycv benchmarks: `python jobs/bench.py [SECTION ...] [--quick] [--gpu] [--out bench.json]`.

Sections:
  synth   composited 300x300 detection scenes (the book's size) per second through the Ray Data
          synthesis driver (Parquet + COCO JSON written), with 1 worker and with one per CPU: scenes/s
          per core and the parallel efficiency rate(N) / (N * rate(1)).
  train   images/s of the Ray Train loop (Ray Data ingest, DDP wrapper, reporting) against a bare
          PyTorch loop with the same model, batch, precision, device and training step, in one run.
  serve   req/s and p50/p99 latency at concurrency 1, 8 and 32 of (a) raycv's Serve app with dynamic
          batching and (b) a single-process FastAPI/uvicorn + torch server with the same model, on the
          same machine in the same run; the figure is (a)/(b) in req/s at concurrency 32.
  predict offline batch prediction of a folder of images through Ray Data with an actor pool.
  search  top-10 queries/s of a 100,000-vector, 512-d identity index (raycv.index): exact (flat) and
          approximate (HNSW) search in batches of 100 queries, with HNSW's recall@10 against the exact
          answer and the build time. Vectors are 10,000 identity clusters of 10 (cosine ~0.6 within one).

Prints a table per section and writes all results to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare_loop_images_per_s(task, cfg, data: str, steps: int) -> float:
    """The same training step as the Ray Train loop, on batches already in device memory."""
    import torch

    from raycv.train import autocast_dtype, build_on_device, build_optimizer, prepare_datasets, train_step

    device = torch.device("cuda" if cfg.gpu else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.cpus_per_worker))  # what Ray gives a worker with that many CPUs
    datasets, meta = prepare_datasets(task, data, cfg)
    rows = datasets["train"].take_batch(cfg.batch_size * 8)
    batches = [{k: torch.tensor(v[i:i + cfg.batch_size], device=device) for k, v in rows.items()}
               for i in range(0, cfg.batch_size * 8, cfg.batch_size)]
    model = build_on_device(task, cfg, meta, device).train()
    optimizer, scheduler = build_optimizer(model, cfg, steps + 10)
    amp_dtype = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    forward_model = torch.compile(model) if cfg.compile else model
    for step in range(5):  # warm-up: allocator, cudnn autotune, compile
        train_step(task, forward_model, batches[step % len(batches)], cfg, optimizer, scheduler, scaler, amp_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(steps):
        train_step(task, forward_model, batches[step % len(batches)], cfg, optimizer, scheduler, scaler, amp_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - started)


def bench_train(args, workdir: str) -> list[dict]:
    from raycv.data.synth import synthesize
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    size = 4096 if args.quick else (50_000 if args.gpu else 10_000)
    data = f"{workdir}/classify-bench"
    synthesize(task, data, {"train": size, "val": 512}, seed=0)
    models = [("vgg11_bn", 0.25)] if args.quick and not args.gpu else [("vgg11_bn", 1.0), ("resnet18", 1.0)]
    batch = 512 if args.gpu else 128
    rows = []
    for model, width in models:
        cfg = task.default_config().replace(model=model, width=width, batch_size=batch, epochs=3, workers=1,
                                            gpu=args.gpu, cpus_per_worker=args.cpus, storage=f"{workdir}/runs",
                                            name=f"bench-{model}-{width}", compile=args.compile)
        result = fit(task, cfg, data)
        ray_rate = statistics.median(row["train_images_per_s"] for row in result.history[1:])  # epoch 1 warms up
        steps = max(20, (size // batch) * 2)
        bare_rate = bare_loop_images_per_s(task, cfg, data, steps)
        rows.append({"model": f"{model} x{width}", "device": "cuda" if args.gpu else f"cpu ({args.cpus} threads)",
                     "batch": batch, "amp": "bf16" if args.gpu else "off", "ray_train_img_s": round(ray_rate, 1),
                     "bare_torch_img_s": round(bare_rate, 1), "ratio": round(ray_rate / bare_rate, 3)})
    return rows


def trained_checkpoint(args, workdir: str) -> tuple[str, str]:
    """A small classify model and its dataset, shared by the serving sections."""
    from raycv.data.synth import synthesize
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    data = f"{workdir}/classify-serve"
    if not Path(data).exists():
        synthesize(task, data, {"train": 2048, "val": 2048}, seed=1)
    # The book's full VGG-11-BN: what users serve, and heavy enough that batching matters.
    cfg = task.default_config().replace(epochs=1, workers=1, cpus_per_worker=args.cpus, storage=f"{workdir}/runs",
                                        name="serve-model")
    return fit(task, cfg, data).best_checkpoint, data


def load_test(url: str, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    def send(index: int) -> tuple[float, int]:
        started = time.perf_counter()
        status = client.post(url, content=bodies[index % len(bodies)], headers={"content-type": "image/png"}).status_code
        return time.perf_counter() - started, status

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=120, limits=limits) as client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(min(requests, 4 * concurrency))))  # warm-up: connections, replicas, caches
        started = time.perf_counter()
        results = list(pool.map(send, range(requests)))
        seconds = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in results)
    return {"req_s": round(requests / seconds, 1), "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 1),
            "errors": sum(status != 200 for _, status in results)}


def bench_serve(args, workdir: str) -> list[dict]:
    import socket
    import subprocess

    import httpx
    from ray import serve

    from raycv.config import ServeOptions
    from raycv.data.synth import open_dataset
    from raycv.serve import build_app
    from raycv.tasks import get_task

    checkpoint, data = trained_checkpoint(args, workdir)
    splits, _ = open_dataset(get_task("classify"), data)
    bodies = [bytes(b) for b in splits["val"].take_batch(256)["image"]]
    requests = 300 if args.quick else 2000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    replicas = 1 if args.quick else 2
    serve.run(build_app(ServeOptions(checkpoint=checkpoint, task="classify", min_replicas=replicas, max_replicas=replicas,
                                     batch_size=32, cpus_per_replica=args.cpus / replicas,
                                     gpu=1.0 / replicas if args.gpu else 0.0)), name="raycv", route_prefix="/")
    rows = []
    for concurrency in (1, 8, 32):
        rows.append({"server": f"raycv serve ({replicas} replica, batch 32)", "concurrency": concurrency,
                     **load_test(f"http://127.0.0.1:{port}/v1/classify/predict", bodies, concurrency, requests)})
    serve.shutdown()
    baseline = subprocess.Popen([sys.executable, str(Path(__file__).parent / "baseline_server.py"), "--checkpoint",
                                 checkpoint, "--port", str(port + 1), "--threads", str(args.cpus)])
    try:
        for _ in range(120):
            try:
                httpx.get(f"http://127.0.0.1:{port + 1}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        for concurrency in (1, 8, 32):
            rows.append({"server": "fastapi+uvicorn, 1 process", "concurrency": concurrency,
                         **load_test(f"http://127.0.0.1:{port + 1}/v1/classify/predict", bodies, concurrency, requests)})
    finally:
        baseline.terminate()
        baseline.wait()
    ours, theirs = (next(r["req_s"] for r in rows if r["concurrency"] == 32 and r["server"].startswith(name))
                    for name in ("raycv", "fastapi"))
    rows.append({"server": "ratio raycv / baseline at concurrency 32", "concurrency": 32,
                 "req_s": round(ours / theirs, 2)})
    return rows


def bench_predict(args, workdir: str) -> list[dict]:
    from raycv.data.synth import open_dataset
    from raycv.inference import predict_folder
    from raycv.tasks import get_task

    checkpoint, data = trained_checkpoint(args, workdir)
    splits, _ = open_dataset(get_task("classify"), data)
    folder = Path(workdir) / "predict-folder"
    folder.mkdir(exist_ok=True)
    batch = splits["val"].take_batch(2048)
    for sample_id, image in zip(batch["id"], batch["image"]):
        (folder / f"{sample_id}.png").write_bytes(image)
    summary = predict_folder(checkpoint, str(folder), str(Path(workdir) / "predictions.csv"), "classify",
                             concurrency=2, batch_size=128)
    return [{"images": summary["images"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"],
             "actors": 2}]


def bench_synth(args, workdir: str) -> list[dict]:
    import ray

    from raycv.data.synth import synthesize
    from raycv.tasks import get_task

    task = get_task("detect")
    count = 2_000 if args.quick else 20_000
    cpus = int(ray.cluster_resources().get("CPU", 1))
    params = {"image_size": 300, "min_objects": 1, "max_objects": 3}
    synthesize(task, str(Path(workdir) / "synth-warmup"), {"train": 64}, params=params)  # start worker processes
    rows = []
    for workers in sorted({1, cpus}):
        started = time.perf_counter()
        synthesize(task, str(Path(workdir) / f"synth-{workers}"), {"train": count}, params=params, workers=workers)
        rate = count / (time.perf_counter() - started)
        rows.append({"workers": workers, "scenes": count, "scenes_per_s": round(rate, 1),
                     "scenes_per_s_per_core": round(rate / workers, 1)})
    for row in rows:
        row["parallel_efficiency"] = round(row["scenes_per_s"] / (row["workers"] * rows[0]["scenes_per_s"]), 3)
    return rows


def bench_search(args, workdir: str) -> list[dict]:
    import numpy as np

    from raycv.index import EmbeddingIndex, faiss_module

    count, dim, identities, queries = 100_000, 512, 10_000, 2_000
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((identities, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def photos(labels: np.ndarray) -> np.ndarray:  # an identity's direction plus per-photo noise
        vectors = centers[labels] + rng.standard_normal((len(labels), dim), dtype=np.float32) * (0.8 / np.sqrt(dim))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    gallery, probe = photos(np.arange(count) % identities), photos(rng.integers(identities, size=queries))
    ids = [f"v{i}" for i in range(count)]
    rows, exact = [], None
    for kind in ("flat", "hnsw") if faiss_module() else ("flat",):
        index = EmbeddingIndex(dim, kind)
        started = time.perf_counter()
        index.add(ids, gallery)
        index.query(probe[:1], k=10)  # builds the search structure
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        answers = [row for start in range(0, queries, 100) for row in index.query(probe[start:start + 100], k=10)]
        rate = queries / (time.perf_counter() - started)
        found = [{item for item, _ in row} for row in answers]
        exact = exact or found
        recall = float(np.mean([len(a & b) / 10 for a, b in zip(found, exact)]))
        rows.append({"index": f"{kind} ({index.backend})", "vectors": count, "dim": dim, "build_s": round(build_s, 1),
                     "queries_per_s": round(rate, 1), "recall_at_10_vs_exact": round(recall, 4)})
    return rows


SECTIONS = {"synth": bench_synth, "train": bench_train, "serve": bench_serve, "predict": bench_predict,
            "search": bench_search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes for 2 CPU cores (minutes)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    parser.add_argument("--cpus", type=int, default=2, help="CPU threads per training worker")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")

    import ray
    import torch

    from raycv.report import table
    from raycv.runtime import init_ray

    init_ray()
    results = {"machine": {"platform": platform.platform(), "cpus": ray.cluster_resources().get("CPU"),
                           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                           "torch": torch.__version__, "ray": ray.__version__},
               "quick": args.quick}
    with tempfile.TemporaryDirectory() as workdir:
        for section in args.sections or list(SECTIONS):
            rows = SECTIONS[section](args, workdir)
            results[section] = rows
            print(table(rows, f"\n[{section}]"))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
