"""raycv benchmarks: `python jobs/bench.py [SECTION ...] [--quick] [--gpu] [--out bench.json]`.

Sections:
  train   images/s of the Ray Train loop (Ray Data ingest, DDP wrapper, reporting) against a bare
          PyTorch loop with the same model, batch, precision, device and training step, in one run.

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


SECTIONS = {"train": bench_train}


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
