"""raycv benchmarks: `python jobs/bench.py [SECTION ...] [--quick] [--gpu] [--dry] [--out bench.json]`.

Sections:
  synth   composited 300x300 detection scenes (the book's size) per second through the Ray Data
          synthesis driver (Parquet + COCO JSON written), with 1 worker and with one per CPU, each worker
          making the same number of scenes (weak scaling), over 4 rounds in alternating order (1 then N,
          N then 1, ...): median scenes/s per core and the parallel efficiency rate(N) / (N * rate(1)),
          beside the efficiency of the same scene work in plain processes, one BLAS thread each as Ray
          gives a 1-CPU task (the machine's own ceiling), measured once.
  train   images/s of the Ray Train loop (Ray Data ingest, DDP wrapper, reporting) against a bare
          PyTorch loop with the same model, batch, precision, device and training step, in one run, for the
          book's VGG-11 at 32 px and torchvision's ResNet-18 at 64 px: 3 rounds (2 with --quick) in turn,
          each fit's first epoch left out as warm-up; median rates, their ratio and the range of the
          rounds' ratios. Then the same loop on 2 DDP workers sharing the same CPUs (or one GPU each),
          against 1 worker.
  ingest  images/s Ray Data delivers through iter_torch_batches (decoded once into the object store, as
          training does by default, and decoded from Parquet every epoch) against the images/s the
          model consumes in a bare training loop: headroom > 1 means data loading is not the bottleneck.
  photo-ingest  a folder of camera-sized JPEGs (raycv.data.photo_crops; 600, 240 with --quick; a pass reads it 8
          times) to augmented 224-px uint8 batches of 64 (photo_pipeline.train_transform through transform_photos):
          Ray Data (read_binary_files -> map_batches -> iter_torch_batches) against torch's DataLoader running the
          same decode and transform, with as many 1-CPU Ray tasks as DataLoader workers (one per CPU); a warm-up
          pass each, then passes in alternating order: median images/s, per core, the ratio Ray / DataLoader,
          seconds to the first batch, and images/s over the middle half of a pass (a long epoch's rate, without
          the start-up that Ray Data pays on every pass). Then one untimed pass each for memory: the peak
          proportional set size of this process and all its descendants (Ray's daemons and idle workers are in it
          for both pipelines) and its rise over the size before the pass, and the rise of the object store's use.
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
  gpu-check  not a benchmark, and run only when named: every GPU path once, each check passing or failing
          on its own with its seconds: bf16 and fp16+GradScaler training steps (first loss against fp32 from
          the same weights and batch), torch.compile against eager, the Ray Train loop on 2 DDP workers (NCCL
          on 2 GPUs, gloo on CPU workers otherwise), 2 Tune trials at 0.5 GPU each, a Serve replica at
          num_gpus 0.5 against the baseline server on the same GPU, validation metrics of a bf16 run equal
          to a separate evaluation, and a CRNN's CTC loss falling under bf16. Sized for well under 8 minutes
          on one H100; exits with status 1 if any check failed:
              python jobs/bench.py gpu-check --out gpu-check.json
          With --dry it runs on the CPU (CUDA hidden, tiny sizes, each GPU piece's CPU equivalent: CPU autocast,
          gloo, fractional CPUs, num_gpus 0, compile's aot_eager backend); the test suite runs it that way.

Every section prints its running time; with --gpu each is sized for one 10-minute call on a one-GPU machine,
and one that takes longer says so.
Prints a table per section and writes all results to one JSON file (--out) and the same tables as
Markdown next to it (bench.json -> bench.md), with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def device_batches(task, cfg, data: str, count: int, device) -> tuple[list[dict], dict]:
    """`count` training batches of `data`, decoded as the Ray Train loop decodes them and already in `device`
    memory, and the dataset's meta."""
    import torch

    from raycv.train import prepare_datasets

    datasets, meta = prepare_datasets(task, data, cfg)
    rows = datasets["train"].take_batch(cfg.batch_size * count)
    batches = [{k: torch.tensor(v[i:i + cfg.batch_size], device=device) for k, v in rows.items()}
               for i in range(0, cfg.batch_size * count, cfg.batch_size)]
    return batches, meta


def bare_training(task, cfg, meta: dict, device, steps_per_epoch: int) -> tuple:
    """Model, optimizer, schedule, GradScaler and autocast dtype, set up as the Ray Train loop sets them up."""
    import torch

    from raycv.devices import autocast_dtype
    from raycv.train import build_on_device, build_optimizer

    model = build_on_device(task, cfg, meta, device).train()
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return model, optimizer, scheduler, scaler, amp_dtype


def bare_loop_images_per_s(task, cfg, data: str, steps: int) -> float:
    """The same training step as the Ray Train loop, on batches already in device memory."""
    import torch

    from raycv.train import train_step

    device = torch.device("cuda" if cfg.gpu else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.cpus_per_worker))  # what Ray gives a worker with that many CPUs
    batches, meta = device_batches(task, cfg, data, 8, device)
    model, optimizer, scheduler, scaler, amp_dtype = bare_training(task, cfg, meta, device, steps + 10)
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


TRAIN_ROUNDS = 3  # alternating Ray Train / bare rounds per model: the medians and the spread of their ratios


def bench_train(args, workdir: str) -> list[dict]:
    import torch

    from raycv.synth import synthesize
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    data, size = classify_bench_data(args, workdir)
    # The book's 32-px network, and one of torchvision's at 64 px (the procedural set resized once and cached,
    # so both loops see the same decoded batches: photo decoding is photo-ingest's measure, not this one's).
    models = [("vgg11_bn", 0.25 if args.quick and not args.gpu else 1.0, {}, data, size)]
    zoo_size = 1024 if args.quick else 4096
    zoo_data = f"{workdir}/classify-bench-zoo"
    if not Path(zoo_data).exists():
        synthesize(task, zoo_data, {"train": zoo_size, "val": 256}, seed=1)
    models.append(("torchvision.resnet18", 1.0, {"image_size": "64"}, zoo_data, zoo_size))
    batch = 512 if args.gpu else 128
    epochs = 2 if args.quick else 3  # epoch 1 is the warm-up the rates leave out
    rounds = 2 if args.quick else TRAIN_ROUNDS
    rows = []
    for model, width, extra, model_data, model_size in models:
        cfg = task.default_config().replace(model=model, width=width, batch_size=batch, epochs=epochs, workers=1,
                                            gpu=args.gpu, cpus_per_worker=args.cpus, storage=f"{workdir}/runs",
                                            compile=args.compile, extra=extra)
        ray_rates, bare_rates = [], []
        for round_index in range(rounds):  # Ray Train, then bare, in turn: drift in the machine hits both
            result = fit(task, cfg.replace(name=f"bench-{model}-{width}-{round_index}"), model_data)
            ray_rates.append(statistics.median(row["train_images_per_s"] for row in result.history[1:]))
            bare_rates.append(bare_loop_images_per_s(task, cfg, model_data, max(20, (model_size // batch) * 2)))
        ratios = [ray / bare for ray, bare in zip(ray_rates, bare_rates, strict=True)]
        ray_rate, bare_rate = statistics.median(ray_rates), statistics.median(bare_rates)
        rows.append({"model": f"{model} x{width}" + (f" {extra['image_size']}px" if extra else ""), "workers": 1,
                     "device": "cuda" if args.gpu else f"cpu ({args.cpus} threads)", "batch": batch,
                     "amp": "bf16" if args.gpu else "off", "rounds": rounds, "ray_train_img_s": round(ray_rate, 1),
                     "bare_torch_img_s": round(bare_rate, 1), "ratio": round(ray_rate / bare_rate, 3),
                     "ratio_range": f"{min(ratios):.3f}-{max(ratios):.3f}"})
    # 1 vs 2 workers on the first model. On CPU both share the same cores (2 workers get half the
    # threads each: DDP's price); on GPUs each worker gets its own (NCCL wants one GPU per rank).
    if args.gpu and torch.cuda.device_count() < 2:
        rows.append({"model": rows[0]["model"], "workers": 2, "device": "skipped: needs 2 GPUs"})
        return rows
    model, width = models[0][:2]
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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_bodies(data: str, count: int) -> list[bytes]:
    """PNG bodies of the classify set's validation images, as clients send them."""
    from raycv.synth import open_dataset
    from raycv.tasks import get_task

    splits, _ = open_dataset(get_task("classify"), data)
    return [bytes(b) for b in splits["val"].take_batch(count)["image"]]


@contextmanager
def serving(options) -> Iterator[str]:
    """raycv's Serve app with these ServeOptions on a free local port: its base URL."""
    from ray import serve

    from raycv.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(options), name="raycv", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@contextmanager
def baseline_serving(checkpoint: str, threads: int, device: str) -> Iterator[str]:
    """jobs/baseline_server.py (one uvicorn process, no Ray) with the same checkpoint on a free local port: its
    base URL. `device` should be the one raycv's replicas use: compare like with like."""
    import subprocess

    import httpx

    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "baseline_server.py"), "--checkpoint",
                               checkpoint, "--port", url.rsplit(":", 1)[1], "--threads", str(threads),
                               "--device", device])
    try:
        for _ in range(120):
            if server.poll() is not None:
                raise RuntimeError(f"the baseline server exited with status {server.returncode}")
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait()


def bench_serve(args, workdir: str) -> list[dict]:
    from raycv.config import ServeOptions

    checkpoint, data = trained_checkpoint(args, workdir)
    bodies = request_bodies(data, 256)
    requests = 100 if args.quick else 2000
    replicas = 1 if args.quick else 2
    options = ServeOptions(checkpoint=checkpoint, task="classify", min_replicas=replicas, max_replicas=replicas,
                           batch_size=32, cpus_per_replica=args.cpus / replicas,
                           gpu=1.0 / replicas if args.gpu else 0.0)
    rows = []
    with serving(options) as url:
        for concurrency in (1, 8, 32):
            rows.append({"server": f"raycv serve ({replicas} replica, batch 32)", "concurrency": concurrency,
                         **load_test(f"{url}/v1/classify/predict", bodies, concurrency, requests)})
    with baseline_serving(checkpoint, args.cpus, "cuda" if args.gpu else "cpu") as url:
        for concurrency in (1, 8, 32):
            rows.append({"server": "fastapi+uvicorn, 1 process", "concurrency": concurrency,
                         **load_test(f"{url}/v1/classify/predict", bodies, concurrency, requests)})
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
    for cache, source in (("on", "object store (decoded once)"),
                          ("off", "Parquet, PNG decode every epoch")):
        datasets, _ = prepare_datasets(task, data, cfg.replace(cache_data=cache))
        rate = batches_per_s(datasets["train"], batch, device)
        rows.append({"source": source, "images": size, "batch": batch, "device": device.type,
                     "ingest_img_s": round(rate, 1), "model": f"{model} x{width}",
                     "model_consumes_img_s": round(consumed, 1), "headroom": round(rate / consumed, 2)})
    return rows


# ---------------------------------------------------------------------------------------------
# photo-ingest: a folder of real-size JPEGs to augmented 224-px batches, Ray Data against torch's DataLoader.

PHOTO_SIZE = 224  # what photo_pipeline.train_transform crops to
PHOTO_BATCH = 64  # the batch both pipelines hand the training loop
PHOTO_PASS_REPEATS = 8  # a pass reads the folder this many times: long enough that a pass's start-up does not dominate
# Batches iter_torch_batches prepares ahead in the driver (the DataLoader's default keeps 2 per worker in flight).
RAY_PREFETCH_BATCHES = 2
# Files each Ray task reads and augments: two training batches. Each task's end waits for the driver to schedule
# the next one; on 2 busy cores those gaps left a core idle part of the time with 64 files per task.
RAY_FILES_PER_TASK = 2 * PHOTO_BATCH


def augmented_photos(encoded: list[bytes] | np.ndarray, size: int) -> np.ndarray:
    """The decode and augmentation both pipelines run: uint8 NHWC training crops (unreadable files skipped)."""
    from raycv.data.photo_pipeline import train_transform, transform_photos

    return transform_photos(encoded, train_transform(size))[0]


def augmented_photo_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    return {"image": augmented_photos(batch["bytes"], size)}


class EncodedPhotoFiles:
    """A map-style torch Dataset of photo files: each item read and augmented in a DataLoader worker."""

    def __init__(self, files: list[str], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torch

        return torch.from_numpy(augmented_photos([Path(self.files[index]).read_bytes()], self.size)[0])


def ray_photo_batches(files: list[str], size: int) -> Iterator:
    """One pass of Ray Data over `files` in 1-CPU tasks, as many at once as the cluster has CPUs, each reading
    and augmenting RAY_FILES_PER_TASK files, batched for training in the driver.

    Tuned on 2 cores, where Ray Data's defaults delivered less than half the DataLoader's rate:
    - map_batches(batch_size=None) takes each read block whole. With a batch_size, Ray Data does not fuse the
      read into the map (a read may change the row count), and the read tasks then take CPU slots of their own.
    - RAY_FILES_PER_TASK files per read task: the default (~16 blocks however many files) made tasks of a few
      dozen files each, and more scheduling gaps per image.
    - op_resource_reservation_enabled=False: the default reserves half of the CPUs per operator, and with one
      fused operator it ran one task at a time though two CPUs were free (spans of the tasks showed it).
    - No concurrency cap (compute=TaskPoolStrategy(size=CPUs)): the cluster's CPUs already hold Ray to that
      many tasks at once, while Ray Data's cap also counts a finished task until the driver takes its output:
      capped, two CPUs computed 1.2 tasks at a time on average; uncapped, 1.5."""
    import ray

    context = ray.data.DataContext.get_current()
    reserving, context.op_resource_reservation_enabled = context.op_resource_reservation_enabled, False
    try:
        blocks = -(-len(files) // RAY_FILES_PER_TASK)
        dataset = ray.data.read_binary_files(files, override_num_blocks=blocks).map_batches(
            augmented_photo_batch, fn_kwargs={"size": size}, batch_size=None, num_cpus=1)
        for batch in dataset.iter_torch_batches(batch_size=PHOTO_BATCH, prefetch_batches=RAY_PREFETCH_BATCHES):
            yield batch["image"]
    finally:
        context.op_resource_reservation_enabled = reserving


def process_tree_pss(root) -> int:
    """Proportional set size in bytes of `root` (a psutil.Process) and all its descendants. Shared pages (the
    object store, torch's shared-memory batches, pages forked copy-on-write) are split among the processes
    that map them, so the sum counts them once; a sum of RSS would count them in every process."""
    import psutil

    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited since it was listed, or not ours
            continue
    return total


def object_store_bytes(state) -> int:
    """Bytes in Ray's object store across the cluster (`ray memory --stats-only` reads the same figure)."""
    from ray._private.internal_api import get_memory_info_reply

    return get_memory_info_reply(state).store_stats.object_store_bytes_used


def photo_jpeg_files(args, workdir: str) -> list[str]:
    """Camera-sized JPEGs of raycv.data.photo_crops (written once): 600 images, 240 with --quick."""
    from raycv.data.photo_crops import write_photo_crops
    from raycv.data.photos import PHOTO_NAMES

    folder = Path(workdir) / "photo-crops"
    if not folder.exists():
        write_photo_crops(str(folder), PHOTO_NAMES, train_per_class=16 if args.quick else 40, val_per_class=0,
                          seed=0)
    return sorted(str(path) for path in folder.glob("train/*/*.jpg"))


def timed_pass(batches: Iterator) -> dict:
    """Images/s of one pass over `batches`, the seconds to its first batch, and images/s over the middle half of
    the pass, where neither the start-up nor the last tasks' tail count (a long epoch's rate)."""
    started, images, arrivals = time.perf_counter(), 0, []
    for batch in batches:
        images += len(batch)
        arrivals.append((time.perf_counter() - started, images))
    seconds = arrivals[-1][0]
    (quarter_s, quarter_images), (three_quarters_s, three_quarters_images) = (
        next(arrival for arrival in arrivals if arrival[1] >= fraction * images) for fraction in (0.25, 0.75))
    return {"img_s": images / seconds, "first_batch_s": arrivals[0][0], "images": images,
            "img_s_mid_pass": (three_quarters_images - quarter_images) / (three_quarters_s - quarter_s)}


def pass_memory(batches: Iterator, sample: Callable[[], tuple[int, int]]) -> dict:
    """Peaks of `sample`'s (process-tree bytes, object-store bytes) over one pass, and the tree's size before it.
    A pass of its own, untimed: one sample reads every process's page tables, about 60 ms of a core, which
    would be taken from the pipeline measured."""
    gc.collect()  # references to the last pass's blocks, which would leave them in the store until collected
    idle_tree, idle_store = sample()
    with Sampler(sample, interval=0.25) as sampler:
        for _ in batches:
            pass
    peak_tree, peak_store = (max(column) for column in zip(*sampler.samples, strict=True))
    return {"tree_pss_peak_mib": round(peak_tree / 2**20), "tree_pss_added_mib": round((peak_tree - idle_tree) / 2**20),
            "object_store_added_mib": round((peak_store - idle_store) / 2**20)}


def bench_photo_ingest(args, workdir: str) -> list[dict]:
    import ray
    import psutil  # Ray ships it, and importing ray puts it on sys.path
    import torch
    from ray._private.internal_api import get_state_from_address

    files = photo_jpeg_files(args, workdir) * PHOTO_PASS_REPEATS
    workers = int(ray.cluster_resources().get("CPU", 1))
    # Persistent workers, as a training run keeps them between epochs (Ray's workers stay too); spawned, since
    # forking this process would copy Ray's gRPC threads' locks in whatever state they are in.
    loader = torch.utils.data.DataLoader(EncodedPhotoFiles(files, PHOTO_SIZE), batch_size=PHOTO_BATCH,
                                         num_workers=workers, persistent_workers=True,
                                         multiprocessing_context="spawn")
    pipelines = {
        f"Ray Data: read_binary_files -> map_batches (1-CPU tasks of {RAY_FILES_PER_TASK} files, {workers} CPUs) -> "
        f"iter_torch_batches({PHOTO_BATCH}, prefetch {RAY_PREFETCH_BATCHES})":
            lambda: ray_photo_batches(files, PHOTO_SIZE),
        f"torch DataLoader(batch {PHOTO_BATCH}, {workers} workers, persistent, prefetch 2 each)": lambda: iter(loader),
    }
    root, state = psutil.Process(), get_state_from_address(ray.get_runtime_context().gcs_address)

    def sample() -> tuple[int, int]:
        return process_tree_pss(root), object_store_bytes(state)

    # Pass 0 warms both up (worker processes, imports, page cache) and is left out. Then the order alternates,
    # as in the synth section, so that a drift of the machine cancels in the median.
    rounds = 3 if args.quick else 5
    names = list(pipelines)
    passes: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(rounds + 1):
        for name in names[::-1] if round_index % 2 else names:
            measured = timed_pass(pipelines[name]())
            if round_index:
                passes[name].append(measured)
    rows = []
    for name in names:
        rate = statistics.median(p["img_s"] for p in passes[name])
        rows.append({"pipeline": name, "workers": workers, "images_per_pass": passes[name][0]["images"],
                     "passes": rounds, "img_s": round(rate, 1), "img_s_per_core": round(rate / workers, 1),
                     "first_batch_s": round(statistics.median(p["first_batch_s"] for p in passes[name]), 2),
                     "img_s_mid_pass": round(statistics.median(p["img_s_mid_pass"] for p in passes[name]), 1),
                     "img_s_per_pass": [round(p["img_s"], 1) for p in passes[name]]})
    # The DataLoader's first: Ray frees a pass's blocks asynchronously, so the store would shrink in the pass after.
    for row, name in reversed(list(zip(rows, names, strict=True))):
        row.update(pass_memory(pipelines[name](), sample))
    ray_passes, loader_passes = passes.values()
    rows.append({"pipeline": "ratio Ray Data / DataLoader (target >= 1)",
                 "img_s": round(rows[0]["img_s"] / rows[1]["img_s"], 3),
                 "img_s_mid_pass": round(rows[0]["img_s_mid_pass"] / rows[1]["img_s_mid_pass"], 3),
                 "img_s_per_pass": [round(r["img_s"] / d["img_s"], 3)
                                    for r, d in zip(ray_passes, loader_passes, strict=True)]})
    return rows


class Sampler:
    """Calls `measure()` every `interval` seconds in a background thread while in a `with` block, keeping what
    it returns (None: nothing to keep)."""

    def __init__(self, measure: Callable[[], object], interval: float = 0.5):
        import threading

        self.measure, self.interval = measure, interval
        self.samples: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(self.interval):
            sample = self.measure()
            if sample is not None:
                self.samples.append(sample)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def gpu_sample() -> tuple[float, float] | None:
    """GPU 0's utilisation (%) and memory in use (MiB) from nvidia-smi; None where it cannot say."""
    import subprocess

    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                 "--format=csv,noheader,nounits", "--id=0"], capture_output=True, text=True).stdout
        utilisation, memory = (float(value) for value in output.strip().split(","))
    except (FileNotFoundError, ValueError):  # no nvidia-smi, or no answer from it
        return None
    return utilisation, memory


def gpu_summary(samples: list[tuple[float, float]]) -> dict:
    if not samples:
        return {"gpu_util_mean_pct": None, "gpu_util_max_pct": None, "gpu_mem_max_mib": None}
    utilisation = [u for u, _ in samples]
    return {"gpu_util_mean_pct": round(statistics.mean(utilisation), 1), "gpu_util_max_pct": max(utilisation),
            "gpu_mem_max_mib": max(m for _, m in samples)}


def bench_tune(args, workdir: str) -> list[dict]:
    import ray

    from raycv.synth import synthesize
    from raycv.tasks import get_task
    from raycv.tune import parse_space

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
        rows.append({"layout": layout, "concurrent": concurrent, "epochs": epochs, "train_images": train_size,
                     **timed_sweep(task, base.replace(**resources), data, space, f"bench-{index}", concurrent,
                                   sample_gpu=args.gpu)})
    return rows


def timed_sweep(task, base, data: str, space: dict, name: str, concurrent: int, sample_gpu: bool) -> dict:
    """A learning-rate sweep without early stopping, timed, with the GPU's utilisation sampled meanwhile."""
    from raycv.tune import sweep

    started = time.perf_counter()
    with Sampler(gpu_sample) if sample_gpu else nullcontext() as sampler:
        result = sweep(task, base, data, space, name=name, max_concurrent=concurrent, asha=False)
    seconds = time.perf_counter() - started
    done = sum("val_accuracy" in row for row in result.rows)
    return {"trials": done, "seconds": round(seconds, 1), "trials_per_hour": round(3600 * done / seconds, 1),
            "best_val_accuracy": round(max(row["val_accuracy"] for row in result.rows if "val_accuracy" in row), 4),
            **(gpu_summary(sampler.samples) if sample_gpu else {})}


# ---------------------------------------------------------------------------------------------
# gpu-check: every GPU path once, each passing or failing on its own, before a GPU run's numbers are trusted.

# A training step's first loss is one forward pass of the seed's weights on the batch, so it compares across
# precisions and against a compiled model. bf16 keeps 8 significant bits (one rounding is off by up to 2**-9,
# 2e-3 of the value), fp16 keeps 11 (2**-12, 2.4e-4). VGG-11's forward pass rounds about once per layer, the
# loss itself runs in fp32 under autocast, and its mean over the batch lets independent roundings partly cancel:
# ten roundings' worth, 2e-2 for bf16 and 2.5e-3 for fp16, is the most rounding explains, while a wrong cast,
# an unscaled fp16 gradient or an overflow shows as a gap of order one or a NaN. fp32 against fp32 (compiled
# against eager) differs by the order of its sums only.
LOSS_TOLERANCE = {"bf16": 2e-2, "fp16": 2.5e-3, "off": 1e-3}
# Validation inside training and a later evaluation run the same fp32 weights, but on a GPU with other
# convolution algorithms (channels_last in training, not in evaluation), which cuDNN computes in TF32 (10-bit
# mantissa, 2**-11 ~ 5e-4): 1e-3 of a metric allows that, while bf16 autocast moves SSIM by tens of percent.
EVAL_RTOL = 1e-3


def precision_name(amp: str, device) -> str:
    """What `--amp amp` computes in on `device`: bf16, fp16 or off (fp32)."""
    import torch

    from raycv.devices import autocast_dtype

    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[autocast_dtype(amp, device)]


def fixed_batch_run(task, cfg, meta: dict, batch: dict, device, steps: int, backend: str = "") -> dict:
    """`steps` training steps on one batch from the weights seed 0 gives, in cfg's precision and through
    torch.compile's `backend` if one is named: each step's loss and seconds, and the GradScaler's final scale.
    On a batch seen again and again the loss must fall."""
    import torch

    from raycv.train import train_step

    torch.manual_seed(0)
    model, optimizer, scheduler, scaler, amp_dtype = bare_training(task, cfg, meta, device, steps)
    forward_model = torch.compile(model, backend=backend) if backend else model
    losses, seconds = [], []
    for _ in range(steps):
        started = time.perf_counter()
        # float() waits for the GPU, so each step's seconds are its own
        losses.append(float(train_step(task, forward_model, batch, cfg, optimizer, scheduler, scaler, amp_dtype)))
        seconds.append(time.perf_counter() - started)
    return {"losses": losses, "seconds": seconds, "scale": scaler.get_scale() if scaler.is_enabled() else None}


class GpuCheckInputs:
    """What the checks share (datasets, a fixed batch, fixed-batch runs), each made on first use and kept: a
    check that cannot make one fails alone, and the next check that needs it tries again."""

    def __init__(self, args, workdir: str):
        import torch

        from raycv.tasks import get_task

        self.dry, self.workdir = args.dry, workdir
        self.device = torch.device("cpu" if args.dry else "cuda")
        self.steps = 4 if args.dry else 20  # dry: enough for a falling loss; bf16 steps are slow on a CPU
        # Inductor is what --compile uses; on a CPU it generates and builds C++ instead of Triton kernels, minutes
        # on 2 cores. The dry run stops one stage short: Dynamo's capture and AOTAutograd's forward and backward
        # graphs run eagerly, everything before the device's code generation.
        self.compile_backend = "aot_eager" if args.dry else "inductor"
        # Dry: the small VGG the test suite trains. On a GPU: the book's VGG-11-BN at a GPU's batch size. AdamW at
        # a constant rate, no augmentation: a fixed batch's loss must fall within a few steps.
        self.classify_cfg = get_task("classify").default_config().replace(
            width=0.25 if args.dry else 1.0, batch_size=16 if args.dry else 256, optimizer="adamw", lr=1e-3,
            weight_decay=0.05, schedule="constant", label_smoothing=0.0, augment=False, gpu=not args.dry,
            cpus_per_worker=1, storage=f"{workdir}/runs")
        self.batches: dict[str, tuple[dict, dict]] = {}
        self.runs: dict[tuple[str, str], dict] = {}

    def dataset(self, task_name: str, sizes: dict[str, int], params: dict | None = None) -> str:
        from raycv.synth import synthesize
        from raycv.tasks import get_task

        path = f"{self.workdir}/check-{task_name}"
        if not Path(path).exists():
            synthesize(get_task(task_name), path, sizes, seed=3, params=params)
        return path

    def classify_data(self) -> str:
        return self.dataset("classify", {"train": 128, "val": 32} if self.dry else {"train": 4096, "val": 512})

    def fixed_batch(self, task_name: str, cfg, data: str) -> tuple[dict, dict]:
        """One training batch of `data` in device memory, and the dataset's meta."""
        from raycv.tasks import get_task

        if task_name not in self.batches:
            batches, meta = device_batches(get_task(task_name), cfg, data, 1, self.device)
            self.batches[task_name] = batches[0], meta
        return self.batches[task_name]

    def classify_run(self, precision: str, backend: str = "") -> dict:
        """fixed_batch_run of the classify model in `precision` (bf16, fp16, off), made once."""
        from raycv.tasks import get_task

        if (precision, backend) not in self.runs:
            cfg = self.classify_cfg.replace(amp=precision)
            batch, meta = self.fixed_batch("classify", cfg, self.classify_data())
            self.runs[precision, backend] = fixed_batch_run(get_task("classify"), cfg, meta, batch, self.device,
                                                            self.steps, backend)
        return self.runs[precision, backend]

    def classify_checkpoint(self) -> str:
        """The classify model seed 0 gives, saved as a raycv checkpoint in this process: serving needs weights,
        not trained ones, and a Ray Train fit of the serve section's model would double the dry run."""
        import torch

        from raycv import checkpoint
        from raycv.synth import open_dataset
        from raycv.tasks import get_task
        from raycv.tasks.base import with_task_options

        folder = f"{self.workdir}/check-checkpoint"
        if not Path(folder).exists():
            task = get_task("classify")
            _, meta = open_dataset(task, self.classify_data())
            torch.manual_seed(0)
            checkpoint.save(folder, task.build_model(self.classify_cfg, meta),
                            {"task": task.name, "config": with_task_options(task, self.classify_cfg).to_dict(),
                             "dataset": meta, "epoch": 0, "history": []})
        return folder


def loss_parity(run: dict, reference: dict, tolerance: float) -> tuple[bool, dict]:
    """Pass when every loss is finite, the first is within `tolerance` (relative) of the reference's first and
    the last is below the first."""
    import math

    losses, expected = run["losses"], reference["losses"][0]
    gap = abs(losses[0] - expected) / abs(expected)
    ok = all(math.isfinite(loss) for loss in losses) and gap < tolerance and losses[-1] < losses[0]
    return ok, {"first_loss": round(losses[0], 5), "reference_first_loss": round(expected, 5),
                "relative_gap": float(f"{gap:.2e}"), "tolerance": tolerance, "last_loss": round(losses[-1], 5),
                "steps": len(losses)}


def check_amp_step(inputs: GpuCheckInputs, precision: str) -> tuple[bool, dict]:
    """Training steps in bf16, or in fp16 with a GradScaler, against fp32 from the same weights and batch."""
    import math

    run = inputs.classify_run(precision)
    ok, detail = loss_parity(run, inputs.classify_run("off"), LOSS_TOLERANCE[precision])
    if run["scale"] is not None:  # fp16: the scaler backs off on overflow, but must stay a usable number
        ok = ok and math.isfinite(run["scale"]) and run["scale"] >= 1
        detail["grad_scale"] = run["scale"]
    return ok, {"device": str(inputs.device), **detail}


def check_compile(inputs: GpuCheckInputs) -> tuple[bool, dict]:
    """torch.compile'd training steps in the precision --amp auto picks, against eager ones."""
    precision = precision_name("auto", inputs.device)
    eager, compiled = inputs.classify_run(precision), inputs.classify_run(precision, inputs.compile_backend)
    ok, detail = loss_parity(compiled, eager, LOSS_TOLERANCE[precision])
    return ok, {"backend": inputs.compile_backend, "precision": precision, **detail,
                "first_step_s": round(compiled["seconds"][0], 1),
                "step_ms_eager": round(1000 * statistics.median(eager["seconds"][1:]), 2),
                "step_ms_compiled": round(1000 * statistics.median(compiled["seconds"][1:]), 2)}


def check_ddp(inputs: GpuCheckInputs) -> tuple[bool, dict]:
    """One epoch of the Ray Train loop on 2 DDP workers: NCCL with SyncBatchNorm on 2 GPUs; elsewhere gloo on
    2 CPU workers, since NCCL cannot put two ranks on one GPU (TrainConfig refuses it)."""
    import math

    import torch

    from raycv.tasks import get_task
    from raycv.train import fit

    nccl = not inputs.dry and torch.cuda.device_count() >= 2
    cfg = inputs.classify_cfg.replace(epochs=1, workers=2, augment=True, amp="auto", name="check-ddp", gpu=nccl,
                                      sync_bn=nccl, **({} if nccl else {"width": 0.25, "batch_size": 16}))
    last = fit(get_task("classify"), cfg, inputs.classify_data()).history[-1]
    return last["workers"] == 2 and math.isfinite(last["train_loss"]), {
        "backend": "nccl, SyncBatchNorm, 1 GPU each" if nccl else "gloo, CPU workers", "workers": last["workers"],
        "train_loss": round(last["train_loss"], 4), "val_accuracy": round(last["val_accuracy"], 4),
        "train_images_per_s": round(last["train_images_per_s"], 1)}


def check_tune(inputs: GpuCheckInputs) -> tuple[bool, dict]:
    """Two Tune trials at once on half a GPU each (dry: half a CPU each, the same fractional placement)."""
    from raycv.tasks import get_task
    from raycv.tune import parse_space

    resources = {"cpus_per_worker": 0.5} if inputs.dry else {"gpus_per_worker": 0.5, "cpus_per_worker": 2}
    base = inputs.classify_cfg.replace(epochs=1, workers=1, augment=True, amp="auto", **resources)
    space = parse_space(["lr=grid:0.003,0.001"], base)
    row = timed_sweep(get_task("classify"), base, inputs.classify_data(), space, "check-tune", concurrent=2,
                      sample_gpu=not inputs.dry)
    return row["trials"] == 2, {"per_trial": "0.5 CPU" if inputs.dry else "0.5 GPU, 2 CPUs", **row}


def check_serve(inputs: GpuCheckInputs) -> tuple[bool, dict]:
    """raycv's Serve app with one replica on half a GPU (dry: num_gpus 0), against the one-process baseline
    server with the same model on the same device; the replica must say it computes there."""
    import httpx

    from raycv.config import ServeOptions

    checkpoint = inputs.classify_checkpoint()
    bodies = request_bodies(inputs.classify_data(), 64)
    gpu, concurrency, requests = (0.0, 8, 48) if inputs.dry else (0.5, 16, 1000)
    options = ServeOptions(checkpoint=checkpoint, task="classify", min_replicas=1, max_replicas=1, batch_size=32,
                           cpus_per_replica=1, gpu=gpu)
    with serving(options) as url:
        device = httpx.get(f"{url}/v1/models", timeout=60).json()["device"]
        ours = load_test(f"{url}/v1/classify/predict", bodies, concurrency, requests)
    with baseline_serving(checkpoint, 1 if inputs.dry else 2, inputs.device.type) as url:
        theirs = load_test(f"{url}/v1/classify/predict", bodies, concurrency, requests)
    ok = device == inputs.device.type and ours["errors"] == theirs["errors"] == 0
    return ok, {"replica": f"num_gpus {gpu:g}, computes on {device}", "concurrency": concurrency,
                "raycv_req_s": ours["req_s"], "baseline_req_s": theirs["req_s"],
                "ratio": round(ours["req_s"] / theirs["req_s"], 2), "raycv_p50_ms": ours["p50_ms"],
                "baseline_p50_ms": theirs["p50_ms"], "errors": ours["errors"] + theirs["errors"]}


def check_eval_amp(inputs: GpuCheckInputs) -> tuple[bool, dict]:
    """A super-resolution model trained under bf16: the metrics its training loop validated (fp32 whatever
    --amp says) against a separate evaluation of the same checkpoint. Beside them, what SSIM reads if the
    evaluation itself ran under bf16 autocast, the error the fp32 rule prevents."""
    import numpy as np
    import torch

    from raycv.devices import autocast_context
    from raycv.inference import evaluate_checkpoint
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("superres")
    data = inputs.dataset("superres", {"train": 32, "val": 16} if inputs.dry else {"train": 512, "val": 64},
                          params={"crop_size": 32 if inputs.dry else 64, "scale": 2})
    cfg = task.default_config().replace(epochs=1, batch_size=8 if inputs.dry else 32, workers=1, cpus_per_worker=1,
                                        amp="bf16", gpu=not inputs.dry, storage=f"{inputs.workdir}/runs",
                                        name="check-eval-amp")
    result = fit(task, cfg, data)
    in_training = {key[4:]: value for key, value in result.history[-1].items() if key.startswith("val_")}
    evaluated = evaluate_checkpoint(result.last_checkpoint, data, task_name=task.name)
    with autocast_context(inputs.device, torch.bfloat16):
        under_autocast = evaluate_checkpoint(result.last_checkpoint, data, task_name=task.name)
    unequal = {key: (round(value, 6), round(evaluated[key], 6)) for key, value in in_training.items()
               if not np.isclose(value, evaluated[key], rtol=EVAL_RTOL, atol=1e-6)}
    return not unequal and len(in_training) > 0, {
        "metrics": len(in_training), "psnr": round(evaluated["psnr"], 4), "ssim": round(evaluated["ssim"], 5),
        "ssim_under_bf16_autocast": round(under_autocast["ssim"], 5), "rtol": EVAL_RTOL,
        "unequal (in training, evaluated)": unequal}


def check_crnn(inputs: GpuCheckInputs) -> tuple[bool, dict]:
    """Training steps of the CRNN (LSTM) text recogniser with CTC under bf16: finite, and falling."""
    import math

    from raycv.tasks import get_task

    task = get_task("textrec")
    # Dry: one batch of 8 (bf16 runs slowly on a CPU), and only the one batch is ever read.
    data = inputs.dataset("textrec", {"train": 16, "val": 4} if inputs.dry else {"train": 512, "val": 64})
    cfg = task.default_config().replace(model="crnn_lstm", amp="bf16", augment=False, schedule="constant",
                                        batch_size=8 if inputs.dry else 64, width=0.25 if inputs.dry else 1.0)
    batch, meta = inputs.fixed_batch("textrec", cfg, data)
    bf16, fp32 = (fixed_batch_run(task, cfg.replace(amp=amp), meta, batch, inputs.device, inputs.steps)["losses"]
                  for amp in ("bf16", "off"))
    ok = all(math.isfinite(loss) for loss in bf16) and bf16[-1] < bf16[0]
    # The recurrence rounds once per column, so the gap to fp32 is reported, not held to VGG's tolerance.
    return ok, {"first_loss": round(bf16[0], 4), "last_loss": round(bf16[-1], 4), "steps": len(bf16),
                "fp32_first_loss": round(fp32[0], 4), "fp32_last_loss": round(fp32[-1], 4)}


GPU_CHECKS = [("bf16_train_step", check_amp_step, "bf16"), ("fp16_gradscaler_train_step", check_amp_step, "fp16"),
              ("torch_compile", check_compile), ("ddp_2_workers", check_ddp), ("tune_half_gpu_trials", check_tune),
              ("serve_half_gpu", check_serve), ("eval_metrics_amp_on_off", check_eval_amp),
              ("crnn_bf16_train_step", check_crnn)]


def run_check(name: str, check, *arguments) -> dict:
    """One check, timed; an exception fails it alone, with its traceback in the log and its message in the row."""
    import traceback

    started = time.perf_counter()
    try:
        ok, detail = check(*arguments)
    except Exception as error:  # one broken path must not hide the others
        traceback.print_exc()
        ok, detail = False, {"error": f"{type(error).__name__}: {error}"[:1000]}
    seconds = round(time.perf_counter() - started, 1)
    print(f"[gpu-check] {name}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s  {json.dumps(detail)}", flush=True)
    return {"check": name, "ok": bool(ok), "seconds": seconds, "detail": detail}


def bench_gpu_check(args, workdir: str) -> list[dict]:
    inputs = GpuCheckInputs(args, workdir)
    rows = [run_check(name, check, inputs, *rest) for name, check, *rest in GPU_CHECKS]
    print(f"[gpu-check] {sum(row['ok'] for row in rows)} of {len(rows)} passed on {inputs.device}", flush=True)
    return rows


SECTIONS = {"synth": bench_synth, "train": bench_train, "ingest": bench_ingest, "photo-ingest": bench_photo_ingest,
            "serve": bench_serve, "predict": bench_predict, "tune": bench_tune, "search": bench_search,
            "gpu-check": bench_gpu_check}
# A check, not a benchmark: named, never run by default.
DEFAULT_SECTIONS = [section for section in SECTIONS if section != "gpu-check"]


def markdown(results: dict, sections: list[str]) -> str:
    from raycv.report import markdown_table

    machine = results["machine"]
    lines = ["# raycv benchmarks", "",
             f"Machine: {machine['platform']}, {machine['cpus']:g} CPUs seen by Ray, GPU: {machine['gpu'] or 'none'}; "
             f"torch {machine['torch']}, Ray {machine['ray']}; "
             f"{'--dry' if results.get('dry') else '--quick' if results['quick'] else 'full sizes'}; "
             f"{results['seconds']:.0f} s in all.", ""]
    for section in sections:
        lines += [f"## {section} ({results['section_seconds'][section]:.0f} s)", "",
                  markdown_table(results[section]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"any of {', '.join(SECTIONS)} (default: all but gpu-check)")
    parser.add_argument("--quick", action="store_true", help="small sizes for 2 CPU cores (minutes)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--dry", action="store_true",
                        help="on the CPU with CUDA hidden, tiny sizes (implies --quick): gpu-check runs each GPU "
                             "path's CPU equivalent, so the check itself is tested where there is no GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    parser.add_argument("--cpus", type=int, default=2, help="CPU threads per training worker")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    if args.dry and args.gpu:
        parser.error("--dry runs on the CPU; drop --gpu")
    if args.dry:
        # Before torch and Ray start: hidden from this process, from Ray's resource count and from every worker.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        args.quick = True
    sections = args.sections or DEFAULT_SECTIONS

    import ray
    import torch

    from raycv.report import table
    from raycv.runtime import init_ray

    if "gpu-check" in sections and not args.dry and not torch.cuda.is_available():
        parser.error("gpu-check needs a CUDA GPU (none found); add --dry to run its CPU equivalents")
    # A dry run is a rehearsal of this machine alone: its own local Ray (never RAY_ADDRESS's cluster, nor another
    # Ray on this machine), with room for 2 DDP workers even on one core.
    init_ray(**({"address": "local", "num_cpus": max(2, os.cpu_count() or 1)} if args.dry else {}))
    results = {"machine": {"platform": platform.platform(), "cpus": ray.cluster_resources().get("CPU"),
                           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                           "torch": torch.__version__, "ray": ray.__version__},
               "quick": args.quick, "dry": args.dry}
    started = time.perf_counter()
    results["section_seconds"] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for section in sections:
            section_started = time.perf_counter()
            rows = SECTIONS[section](args, workdir)
            results[section] = rows
            seconds = results["section_seconds"][section] = round(time.perf_counter() - section_started, 1)
            # On a GPU machine each section should fit one 10-minute call.
            on_gpu = (args.gpu or section == "gpu-check") and not args.dry
            over = "; over 10 minutes: trim its sizes" if on_gpu and seconds > 600 else ""
            print(table(rows, f"\n[{section}] ({seconds:.0f} s{over})"), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    markdown_path = Path(args.out).with_suffix(".md")
    markdown_path.write_text(markdown(results, sections) + "\n")
    print(f"\nall sections: {results['seconds']:.0f} s; wrote {args.out} and {markdown_path}")
    failed = [row["check"] for row in results.get("gpu-check", []) if not row["ok"]]
    if failed:
        sys.exit(f"gpu-check failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
