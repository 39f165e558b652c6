"""raycv benchmarks: `python jobs/bench.py [SECTION ...] [--quick] [--gpu] [--out bench.json]`.

Sections:
  synth   composited 300x300 detection scenes (the book's size) per second through the Ray Data
          synthesis driver (Parquet + COCO JSON written), with 1 worker and with one per CPU, each worker
          making the same number of scenes (weak scaling), over 4 rounds in alternating order (1 then N,
          N then 1, ...): median scenes/s per core and the parallel efficiency rate(N) / (N * rate(1)),
          beside the efficiency of the same scene work in plain processes, one BLAS thread each as Ray
          gives a 1-CPU task (the machine's own ceiling), measured once.
  train   images/s of the Ray Train loop (Ray Data ingest, DDP wrapper, reporting) against a bare
          PyTorch loop with the same model, batch, precision, device and training step, in one run;
          then the same loop on 2 DDP workers sharing the same CPUs (or one GPU each), against 1 worker.
  ingest  images/s Ray Data delivers through iter_torch_batches (decoded once into the object store, as
          training does by default, and decoded from Parquet every epoch) against the images/s the
          model consumes in a bare training loop: headroom > 1 means data loading is not the bottleneck.
  serve   req/s and p50/p95/p99 latency at concurrency 1, 8 and 32 of (a) raycv's Serve app with dynamic
          batching and (b) a single-process FastAPI/uvicorn + torch server with the same model, on the
          same machine in the same run; the figure is (a)/(b) in req/s at concurrency 32.
  predict offline batch prediction of a folder of images through Ray Data with an actor pool.
  tune    trials per hour of a small learning-rate sweep (every trial a Ray Train run), one trial at a
          time against several at once on the same resources: on a GPU, fractional GPUs (4 trials at
          0.25 GPU) against a whole GPU per trial, with the GPU's utilisation sampled during each sweep.
  search  top-10 queries/s of a 100,000-vector, 512-d identity index (raycv.index): exact (flat) and
          approximate (HNSW) search in batches of 100 queries, with HNSW's recall@10 against the exact
          answer and the build time. Vectors are 10,000 identity clusters of 10 (cosine ~0.6 within one).

Prints a table per section and writes all results to one JSON file (--out) and the same tables as
Markdown next to it (bench.json -> bench.md), with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare_loop_images_per_s(task, cfg, data: str, steps: int) -> float:
    """The same training step as the Ray Train loop, on batches already in device memory."""
    import torch

    from raycv.devices import autocast_dtype
    from raycv.train import build_on_device, build_optimizer, prepare_datasets, train_step

    device = torch.device("cuda" if cfg.gpu else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.cpus_per_worker))  # what Ray gives a worker with that many CPUs
    datasets, meta = prepare_datasets(task, data, cfg)
    rows = datasets["train"].take_batch(cfg.batch_size * 8)
    batches = [{k: torch.tensor(v[i:i + cfg.batch_size], device=device) for k, v in rows.items()}
               for i in range(0, cfg.batch_size * 8, cfg.batch_size)]
    model = build_on_device(task, cfg, meta, device).train()
    optimizer, scheduler = build_optimizer(model, cfg, steps + 10)
    amp_dtype = autocast_dtype(cfg.amp, device)
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


def classify_bench_data(args, workdir: str) -> tuple[str, int]:
    """The procedural classify set shared by the train and ingest sections (synthesized once)."""
    from raycv.synth import synthesize
    from raycv.tasks import get_task

    size = 4096 if args.quick else (50_000 if args.gpu else 10_000)
    data = f"{workdir}/classify-bench"
    if not Path(data).exists():
        synthesize(get_task("classify"), data, {"train": size, "val": 512}, seed=0)
    return data, size


def bench_train(args, workdir: str) -> list[dict]:
    import torch

    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    data, size = classify_bench_data(args, workdir)
    models = [("vgg11_bn", 0.25)] if args.quick and not args.gpu else [("vgg11_bn", 1.0), ("resnet18", 1.0)]
    batch = 512 if args.gpu else 128
    epochs = 2 if args.quick else 3  # epoch 1 is the warm-up the rates leave out
    rows = []
    for model, width in models:
        cfg = task.default_config().replace(model=model, width=width, batch_size=batch, epochs=epochs, workers=1,
                                            gpu=args.gpu, cpus_per_worker=args.cpus, storage=f"{workdir}/runs",
                                            name=f"bench-{model}-{width}", compile=args.compile)
        result = fit(task, cfg, data)
        ray_rate = statistics.median(row["train_images_per_s"] for row in result.history[1:])  # epoch 1 warms up
        steps = max(20, (size // batch) * 2)
        bare_rate = bare_loop_images_per_s(task, cfg, data, steps)
        rows.append({"model": f"{model} x{width}", "workers": 1,
                     "device": "cuda" if args.gpu else f"cpu ({args.cpus} threads)", "batch": batch,
                     "amp": "bf16" if args.gpu else "off", "ray_train_img_s": round(ray_rate, 1),
                     "bare_torch_img_s": round(bare_rate, 1), "ratio": round(ray_rate / bare_rate, 3)})
    # 1 vs 2 workers on the first model. On CPU both share the same cores (2 workers get half the
    # threads each: DDP's price); on GPUs each worker gets its own (NCCL wants one GPU per rank).
    if args.gpu and torch.cuda.device_count() < 2:
        rows.append({"model": rows[0]["model"], "workers": 2, "device": "skipped: needs 2 GPUs"})
        return rows
    model, width = models[0]
    cfg = task.default_config().replace(model=model, width=width, batch_size=batch, epochs=epochs, workers=2,
                                        gpu=args.gpu, cpus_per_worker=args.cpus if args.gpu else max(1, args.cpus // 2),
                                        storage=f"{workdir}/runs", name=f"bench-{model}-{width}-2w",
                                        compile=args.compile)
    two = statistics.median(row["train_images_per_s"] for row in fit(task, cfg, data).history[1:])
    rows.append({"model": f"{model} x{width}", "workers": 2,
                 "device": "cuda, 1 GPU each" if args.gpu else f"cpu ({cfg.cpus_per_worker:g} threads each)",
                 "batch": f"{batch} per worker", "amp": rows[0]["amp"], "ray_train_img_s": round(two, 1),
                 "speedup_vs_1_worker": round(two / rows[0]["ray_train_img_s"], 3)})
    return rows


def trained_checkpoint(args, workdir: str) -> tuple[str, str]:
    """A small classify model and its dataset, shared by the serving sections."""
    from raycv.synth import synthesize
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    data = f"{workdir}/classify-serve"
    if not Path(data).exists():
        synthesize(task, data, {"train": 512 if args.quick else 2048, "val": 1024 if args.quick else 2048}, seed=1)
    # The book's full VGG-11-BN: what users serve, and heavy enough that batching matters.
    cfg = task.default_config().replace(epochs=1, workers=1, cpus_per_worker=args.cpus, storage=f"{workdir}/runs",
                                        name="serve-model")
    return fit(task, cfg, data).best_checkpoint, data


def load_test(url: str, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    def send(index: int) -> tuple[float, int]:
        started = time.perf_counter()
        status = client.post(url, content=bodies[index % len(bodies)],
                             headers={"content-type": "image/png"}).status_code
        return time.perf_counter() - started, status

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=120, limits=limits) as client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(min(requests, 4 * concurrency))))  # warm-up: connections, replicas, caches
        started = time.perf_counter()
        results = list(pool.map(send, range(requests)))
        seconds = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in results)
    return {"req_s": round(requests / seconds, 1), "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p95_ms": round(1000 * latencies[int(len(latencies) * 0.95) - 1], 1),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 1),
            "errors": sum(status != 200 for _, status in results)}


def bench_serve(args, workdir: str) -> list[dict]:
    import socket
    import subprocess

    import httpx
    from ray import serve

    from raycv.config import ServeOptions
    from raycv.synth import open_dataset
    from raycv.serve import build_app
    from raycv.tasks import get_task

    checkpoint, data = trained_checkpoint(args, workdir)
    splits, _ = open_dataset(get_task("classify"), data)
    bodies = [bytes(b) for b in splits["val"].take_batch(256)["image"]]
    requests = 100 if args.quick else 2000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    replicas = 1 if args.quick else 2
    serve.run(build_app(ServeOptions(checkpoint=checkpoint, task="classify", min_replicas=replicas,
                                     max_replicas=replicas, batch_size=32, cpus_per_replica=args.cpus / replicas,
                                     gpu=1.0 / replicas if args.gpu else 0.0)), name="raycv", route_prefix="/")
    rows = []
    for concurrency in (1, 8, 32):
        rows.append({"server": f"raycv serve ({replicas} replica, batch 32)", "concurrency": concurrency,
                     **load_test(f"http://127.0.0.1:{port}/v1/classify/predict", bodies, concurrency, requests)})
    serve.shutdown()
    baseline = subprocess.Popen([sys.executable, str(Path(__file__).parent / "baseline_server.py"), "--checkpoint",
                                 checkpoint, "--port", str(port + 1), "--threads", str(args.cpus),
                                 "--device", "cuda" if args.gpu else "cpu"])  # the same device as raycv's replicas
    try:
        for _ in range(120):
            try:
                httpx.get(f"http://127.0.0.1:{port + 1}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        for concurrency in (1, 8, 32):
            rows.append({"server": "fastapi+uvicorn, 1 process", "concurrency": concurrency,
                         **load_test(f"http://127.0.0.1:{port + 1}/v1/classify/predict", bodies, concurrency,
                                     requests)})
    finally:
        baseline.terminate()
        baseline.wait()
    ours, theirs = (next(r["req_s"] for r in rows if r["concurrency"] == 32 and r["server"].startswith(name))
                    for name in ("raycv", "fastapi"))
    rows.append({"server": "ratio raycv / baseline at concurrency 32", "concurrency": 32,
                 "req_s": round(ours / theirs, 2)})
    return rows


def bench_predict(args, workdir: str) -> list[dict]:
    from raycv.synth import open_dataset
    from raycv.inference import predict_folder
    from raycv.tasks import get_task

    checkpoint, data = trained_checkpoint(args, workdir)
    splits, _ = open_dataset(get_task("classify"), data)
    folder = Path(workdir) / "predict-folder"
    folder.mkdir(exist_ok=True)
    batch = splits["val"].take_batch(512 if args.quick else 2048)
    for sample_id, image in zip(batch["id"], batch["image"], strict=False):
        (folder / f"{sample_id}.png").write_bytes(image)
    summary = predict_folder(checkpoint, str(folder), str(Path(workdir) / "predictions.csv"), "classify",
                             concurrency=2, batch_size=128)
    return [{"images": summary["images"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"],
             "actors": 2}]


def synthesized_rows(block: dict, **kwargs) -> int:
    """The plain-process ceiling's unit of work: one synthesis block, of which only the row count goes
    back. Returning the rows would have the parent unpickle ~80 MB per block on the cores being measured,
    work the Ray runs do not have (they write Parquet inside the task)."""
    from raycv.synth import _synthesize_blocks

    return len(_synthesize_blocks(block, **kwargs)["id"])


def bench_synth(args, workdir: str) -> list[dict]:
    import ray

    from raycv.synth import synthesize
    from raycv.tasks import get_task

    task = get_task("detect")
    # Weak scaling: every worker gets the same number of scenes, so each run lasts about as long on 2 cores
    # as on 64. A fixed total would leave a many-core run a few seconds long, mostly Ray Data's fixed
    # start-up (about 1 s per execution), and measure that instead of synthesis.
    scenes_per_worker = 400 if args.quick else 2_500
    # A shared VM drifts by several % over minutes. Rounds alternate the order (1 worker then all, then all
    # then 1, ...) so that a steady drift cancels in the median instead of favouring one side.
    rounds = 4
    cpus = int(ray.cluster_resources().get("CPU", 1))
    worker_counts = sorted({1, cpus})
    params = {"image_size": 300, "min_objects": 1, "max_objects": 3}
    synthesize(task, str(Path(workdir) / "synth-warmup"), {"train": 64}, params=params)  # start worker processes
    rates: dict[int, list[float]] = {workers: [] for workers in worker_counts}
    for round_index in range(rounds):
        for workers in worker_counts[::-1] if round_index % 2 else worker_counts:
            count = workers * scenes_per_worker
            started = time.perf_counter()
            synthesize(task, str(Path(workdir) / f"synth-{workers}-{round_index}"), {"train": count},
                       params=params, workers=workers)
            rates[workers].append(count / (time.perf_counter() - started))
    plain = plain_process_synthesis_rates(task, params, worker_counts, scenes_per_worker)

    rows = []
    for workers in worker_counts:
        rate = statistics.median(rates[workers])
        rows.append({"workers": workers, "scenes": workers * scenes_per_worker, "rounds": rounds,
                     "scenes_per_s": round(rate, 1), "scenes_per_s_per_core": round(rate / workers, 1),
                     "parallel_efficiency": round(rate / (workers * statistics.median(rates[1])), 3),
                     "scenes_per_s_per_round": [round(r, 1) for r in rates[workers]],
                     # Each round against the 1-worker run next to it: the spread the drift leaves.
                     "efficiency_per_round": [round(r / (workers * r1), 3)
                                              for r, r1 in zip(rates[workers], rates[1], strict=False)],
                     "plain_processes_scenes_per_s": round(plain[workers], 1),
                     "plain_processes_efficiency": round(plain[workers] / (workers * plain[1]), 3)})
    return rows


def plain_process_synthesis_rates(task, params: dict, worker_counts: list[int],
                                  scenes_per_worker: int) -> dict[int, float]:
    """The machine's own ceiling: scenes/s of the same blocks of scene work in plain processes, with no Ray
    and no Parquet, once per worker count. Each process gets one BLAS/OpenMP thread, as Ray gives a 1-CPU
    task: with the default two, OpenBLAS threads spinning beside the other process held 2 plain processes
    on 2 cores to 0.75."""
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from raycv.synth import MAX_BLOCK_SAMPLES, block_bounds

    driver_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # spawned processes start with the environment of their first map
    rates = {}
    try:
        for workers in worker_counts:
            count = workers * scenes_per_worker
            bounds = block_bounds(count, workers, MAX_BLOCK_SAMPLES)
            work = functools.partial(synthesized_rows, bounds=bounds, task_name=task.name, seed=0, split="train",
                                     params={**task.synth_defaults, **params})
            blocks = [{"id": [index]} for index in range(len(bounds) - 1)]
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(work, blocks[-workers:]))  # start and import, on the small last blocks
                started = time.perf_counter()
                assert sum(pool.map(work, blocks)) == count
                rates[workers] = count / (time.perf_counter() - started)
    finally:
        if driver_threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = driver_threads
    return rates


def bench_search(args, workdir: str) -> list[dict]:
    import numpy as np

    from raycv.index import EmbeddingIndex, faiss_module

    # --quick: a 20,000-vector index (the 100,000-vector figure is the full run's).
    count, dim, identities, queries = (20_000, 512, 2_000, 1_000) if args.quick else (100_000, 512, 10_000, 2_000)
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
        recall = float(np.mean([len(a & b) / 10 for a, b in zip(found, exact, strict=False)]))
        rows.append({"index": f"{kind} ({index.backend})", "vectors": count, "dim": dim, "build_s": round(build_s, 1),
                     "queries_per_s": round(rate, 1), "recall_at_10_vs_exact": round(recall, 4)})
    return rows


def batches_per_s(dataset, batch_size: int, device, epochs: int = 2) -> float:
    """Images/s of iter_torch_batches over `dataset` onto `device`, as the training loop iterates (same
    batch size, shuffle buffer and drop_last); the first epoch is a warm-up."""
    import torch

    rate = 0.0
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for batch in dataset.iter_torch_batches(batch_size=batch_size, device=device, drop_last=True,
                                                local_shuffle_buffer_size=min(10 * batch_size, 10_000)):
            seen += len(next(iter(batch.values())))
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = seen / (time.perf_counter() - started)
    return rate


def bench_ingest(args, workdir: str) -> list[dict]:
    import torch

    from raycv.tasks import get_task
    from raycv.train import prepare_datasets

    task = get_task("classify")
    data, size = classify_bench_data(args, workdir)
    model, width = ("vgg11_bn", 0.25) if args.quick and not args.gpu else ("resnet18", 1.0)
    batch = 512 if args.gpu else 128
    cfg = task.default_config().replace(model=model, width=width, batch_size=batch, gpu=args.gpu,
                                        cpus_per_worker=args.cpus, compile=args.compile)
    device = torch.device("cuda" if args.gpu else "cpu")
    consumed = bare_loop_images_per_s(task, cfg, data, steps=max(20, (size // batch) // 2))
    rows = []
    for cache, source in ((True, "object store (decoded once, the default)"),
                          (False, "Parquet, PNG decode every epoch")):
        datasets, _ = prepare_datasets(task, data, cfg.replace(cache_data=cache))
        rate = batches_per_s(datasets["train"], batch, device)
        rows.append({"source": source, "images": size, "batch": batch, "device": device.type,
                     "ingest_img_s": round(rate, 1), "model": f"{model} x{width}",
                     "model_consumes_img_s": round(consumed, 1), "headroom": round(rate / consumed, 2)})
    return rows


class GpuSampler:
    """Samples GPU utilisation and memory with nvidia-smi every half second while in a `with` block."""

    def __init__(self):
        import shutil
        import threading

        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        import subprocess

        while not self.stop.wait(0.5):
            output = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                     "--format=csv,noheader,nounits", "--id=0"], capture_output=True, text=True).stdout
            try:
                utilisation, memory = (float(value) for value in output.strip().split(","))
            except ValueError:
                continue
            self.samples.append((utilisation, memory))

    def __enter__(self):
        if self.available:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.available:
            self.thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_util_max_pct": None, "gpu_mem_max_mib": None}
        utilisation = [u for u, _ in self.samples]
        return {"gpu_util_mean_pct": round(statistics.mean(utilisation), 1), "gpu_util_max_pct": max(utilisation),
                "gpu_mem_max_mib": max(m for _, m in self.samples)}


def bench_tune(args, workdir: str) -> list[dict]:
    import ray

    from raycv.synth import synthesize
    from raycv.tasks import get_task
    from raycv.tune import parse_space, sweep

    task = get_task("classify")
    data = f"{workdir}/classify-tune"
    train_size = 1024 if args.quick else (20_000 if args.gpu else 4096)
    synthesize(task, data, {"train": train_size, "val": 256}, seed=2)
    trials, epochs = (2, 1) if args.quick else (8, 3)
    base = task.default_config().replace(model="vgg11_bn", width=0.25 if args.quick else 0.5, epochs=epochs, workers=1,
                                         batch_size=512 if args.gpu else 128, gpu=args.gpu, storage=f"{workdir}/runs",
                                         compile=args.compile)
    lrs = ",".join(f"{lr:g}" for lr in (0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.006, 0.003)[:trials])
    space = parse_space([f"lr=grid:{lrs}"], base)
    if args.gpu:  # whole GPU per trial, then 4 trials sharing it
        layouts = [("1 GPU per trial", 1, {"gpus_per_worker": 1.0, "cpus_per_worker": 2}),
                   ("0.25 GPU per trial", 4, {"gpus_per_worker": 0.25, "cpus_per_worker": 2})]
    else:  # one trial at a time, then as many as the CPUs hold (0.9 CPU each leaves room for the drivers)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        layouts = [("0.9 CPU per trial, 1 at a time", 1, {"cpus_per_worker": 0.9}),
                   (f"0.9 CPU per trial, {cpus} at a time", cpus, {"cpus_per_worker": 0.9})]
    rows = []
    for index, (layout, concurrent, resources) in enumerate(layouts):
        started = time.perf_counter()
        with GpuSampler() if args.gpu else nullcontext() as sampler:
            result = sweep(task, base.replace(**resources), data, space, name=f"bench-{index}",
                           max_concurrent=concurrent, asha=False)
        seconds = time.perf_counter() - started
        done = sum("val_accuracy" in row for row in result.rows)
        rows.append({"layout": layout, "concurrent": concurrent, "trials": done, "epochs": epochs,
                     "train_images": train_size, "seconds": round(seconds, 1),
                     "trials_per_hour": round(3600 * done / seconds, 1),
                     "best_val_accuracy": round(max(row["val_accuracy"] for row in result.rows
                                                    if "val_accuracy" in row), 4),
                     **(sampler.summary() if args.gpu else {})})
    return rows


SECTIONS = {"synth": bench_synth, "train": bench_train, "ingest": bench_ingest, "serve": bench_serve,
            "predict": bench_predict, "tune": bench_tune, "search": bench_search}


def markdown(results: dict, sections: list[str]) -> str:
    from raycv.report import markdown_table

    machine = results["machine"]
    lines = ["# raycv benchmarks", "",
             f"Machine: {machine['platform']}, {machine['cpus']:g} CPUs seen by Ray, GPU: {machine['gpu'] or 'none'}; "
             f"torch {machine['torch']}, Ray {machine['ray']}; {'--quick' if results['quick'] else 'full sizes'}; "
             f"{results['seconds']:.0f} s in all.", ""]
    for section in sections:
        lines += [f"## {section} ({results['section_seconds'][section]:.0f} s)", "",
                  markdown_table(results[section]), ""]
    return "\n".join(lines)


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
    sections = args.sections or list(SECTIONS)
    started = time.perf_counter()
    results["section_seconds"] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for section in sections:
            section_started = time.perf_counter()
            rows = SECTIONS[section](args, workdir)
            results[section] = rows
            results["section_seconds"][section] = round(time.perf_counter() - section_started, 1)
            print(table(rows, f"\n[{section}] ({results['section_seconds'][section]:.0f} s)"))
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    markdown_path = Path(args.out).with_suffix(".md")
    markdown_path.write_text(markdown(results, sections) + "\n")
    print(f"\nall sections: {results['seconds']:.0f} s; wrote {args.out} and {markdown_path}")


if __name__ == "__main__":
    main()
