"""Multi-node scenarios on a Ray cluster simulated on one machine (`ray.cluster_utils.Cluster`).

Run by tests/test_multinode.py in a child process: one process can hold only one Ray instance, and the
test session already has one. Writes one JSON file with what each scenario observed; the tests assert.

    python tests/multinode_cluster.py --out result.json --workdir DIR

The layout makes placement provable with CPU counts alone: the head has 1 CPU (the driver, the Train
controller, Ray Data's tasks), each worker node has 2, and a training worker asks for 1.5, so a worker
never fits on the head and two never fit on one worker node. No dashboard (its processes would cost
the 2 cores more than the scenarios): placement and replicas are read from the GCS.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

HEAD = {"num_cpus": 1, "include_dashboard": False, "object_store_memory": 200 * 1024 * 1024}
WORKER_NODE = {"num_cpus": 2, "object_store_memory": 150 * 1024 * 1024}
CPUS_PER_TRAIN_WORKER = 1.5
REPLICA_PREFIX = "SERVE_REPLICA::raycv#ModelServer#"


def train_placement() -> dict[str, list[str]]:
    """Placement groups of training worker groups (bundles of CPUS_PER_TRAIN_WORKER CPUs), by id, with
    the node of each bundle. Read from the GCS, so no dashboard is needed."""
    import ray

    return {pg_id: [pg["bundles_to_node_id"][index] for index in sorted(pg["bundles_to_node_id"])]
            for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] == "CREATED" and pg["bundles"]
            and all(bundle == {"CPU": CPUS_PER_TRAIN_WORKER} for bundle in pg["bundles"].values())}


def serve_replicas() -> dict[str, object]:
    """Live Serve replica actors of the raycv app, by actor id."""
    import ray

    replicas = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(REPLICA_PREFIX):
            try:
                handle = ray.get_actor(entry["name"], namespace=entry["namespace"])
            except ValueError:  # died between the listing and the lookup
                continue
            replicas[handle._actor_id.hex()] = handle
    return replicas


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def registered_checkpoints(run_dir: str) -> list[int]:
    """Epochs of the checkpoints Ray Train's controller has registered for the run (its snapshot on
    storage). A checkpoint folder alone is not enough: until the controller registers the report, a
    restarted worker group would not get it."""
    from raycv import storage

    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    if not storage.exists(snapshot):
        return []
    try:
        results = storage.read_json(snapshot)["checkpoint_results"]
    except json.JSONDecodeError:  # the controller is writing it right now: look again at the next poll
        return []
    return sorted(result["metrics"]["epoch"] for result in results)


def scenario_train(cluster, workdir: Path) -> dict:
    """Two DDP workers, one per worker node. Once the controller has registered the first checkpoint,
    the node of one worker is removed (its processes killed, as in a crash) and an empty node joins.
    FailureConfig restarts the worker group, which resumes from the checkpoint on storage: the new
    node never had anything on a local disk."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from conftest import TINY
    from raycv import storage
    from raycv.synth import synthesize
    from raycv.tasks import get_task
    from raycv.train import fit

    task = get_task("classify")
    # Storage as a URI: data, checkpoints and reports go through the pyarrow filesystem layer only (the
    # code path of s3://); the train loop writes nothing to a local folder of its own.
    storage_uri = f"file://{workdir}/storage"
    data = f"{storage_uri}/data"
    synthesize(task, data, {"train": 512, "val": 128}, seed=3, workers=1)
    for _ in range(2):
        cluster.add_node(**WORKER_NODE)
    # Ray Data's tasks run on the head: on 2 cores, every worker process a node starts costs seconds of
    # imports, and the worker nodes are there for training.
    with warnings.catch_warnings():  # deprecated in favour of Ray Data's own placement, still honoured
        warnings.simplefilter("ignore")
        ray.data.DataContext.get_current().scheduling_strategy = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)
    cfg = task.default_config().replace(
        epochs=3, workers=2, cpus_per_worker=CPUS_PER_TRAIN_WORKER, storage=f"{storage_uri}/runs", name="multinode",
        max_failures=1, **TINY)
    run_dir = f"{storage_uri}/runs/classify/multinode"

    outcome: dict = {}

    def run_fit():
        try:
            outcome["result"] = fit(task, cfg, data)
        except BaseException as problem:  # re-raised in the main thread
            outcome["error"] = problem

    started = time.monotonic()
    fitting = threading.Thread(target=run_fit, daemon=True)
    fitting.start()
    first_groups = wait_for(lambda: train_placement() or "error" in outcome, 180, "the training worker group")
    wait_for(lambda: registered_checkpoints(run_dir) or "error" in outcome, 180, "the first registered checkpoint")
    if "error" in outcome:
        raise outcome["error"]
    (first_group, first_nodes), = first_groups.items()
    checkpoints_before_loss = registered_checkpoints(run_dir)
    victim = next(node for node in cluster.worker_nodes if node.node_id == first_nodes[0])
    removed_after_s = time.monotonic() - started
    cluster.remove_node(victim, allow_graceful=False)  # a crash, not a drain
    replacement = cluster.add_node(**WORKER_NODE)
    second_groups = wait_for(lambda: {k: v for k, v in train_placement().items() if k != first_group}
                             or not fitting.is_alive(), 180, "a restarted worker group")
    fitting.join(timeout=300)
    if fitting.is_alive():
        raise TimeoutError("training did not finish within 300 s of the node loss")
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    return {
        "head_node": cluster.head_node.node_id,
        "first_attempt_nodes": first_nodes,
        "removed_node": victim.node_id,
        "removed_after_s": round(removed_after_s, 1),
        "checkpoints_before_loss": checkpoints_before_loss,
        "replacement_node": replacement.node_id,
        "second_attempt_nodes": next(iter(second_groups.values())) if isinstance(second_groups, dict) else [],
        "epochs": [row["epoch"] for row in result.history],
        "workers_per_epoch": [row["workers"] for row in result.history],
        "train_loss": [row["train_loss"] for row in result.history],
        "resumed_at": result.resumed_at,
        "storage_uri": storage_uri,
        "run_dir": result.run_dir,
        "run_files": storage.list_dir(run_dir),
        "best_checkpoint": result.best_checkpoint,
        "data": data,
        "seconds": round(time.monotonic() - started, 1),
    }


def scenario_placement(cluster) -> dict:
    """raycv's GPU placement check, joined to this cluster, which has no autoscaler: first with no GPU
    anywhere, then with a node of 4 (logical) GPUs, removed again before the other scenarios."""
    import os

    from raycv.devices import check_cluster_gpus, cluster_may_grow
    from raycv.errors import RaycvError

    def refusal(processes: int, gpus_each: float) -> str | None:
        try:
            check_cluster_gpus(processes, gpus_each, f"training with {processes} workers")
        except RaycvError as error:
            return str(error)
        return None

    os.environ["RAY_ADDRESS"] = cluster.address  # as under `ray job submit`
    try:
        seen = {"may_grow": cluster_may_grow(), "no_gpus": refusal(2, 1)}
        gpu_node = cluster.add_node(num_cpus=0, num_gpus=4)
        cluster.wait_for_nodes()
        seen |= {"eight_of_four": refusal(8, 1), "four_of_four": refusal(4, 1), "two_of_three": refusal(2, 3),
                 "eight_halves": refusal(8, 0.5)}
        cluster.remove_node(gpu_node)
    finally:
        del os.environ["RAY_ADDRESS"]
    return seen


def first_rows(data: str, split: str, count: int) -> tuple[dict[str, np.ndarray], dict]:
    """Stored rows of a synthesized split read with pyarrow alone (no Ray Data job), and the dataset meta."""
    import pyarrow.dataset

    from raycv import storage
    from raycv.synth import MANIFEST

    filesystem, folder = storage.resolve(storage.join(data, split))
    rows = pyarrow.dataset.dataset(folder, filesystem=filesystem, format="parquet").head(count).to_pydict()
    batch = {key: np.array(values, dtype=object if isinstance(values[0], bytes) else None)
             for key, values in rows.items()}
    return batch, storage.read_json(storage.join(data, MANIFEST))["meta"]


def scenario_serve(checkpoint: str, data: str) -> dict:
    """One replica under load from four clients is killed mid-load. Until Serve has replaced it,
    requests wait or fail; a client retries a failed request. Every request must end answered, with
    the answer the model gives locally."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import ray
    from ray import serve

    from raycv.checkpoint import load_model
    from raycv.config import ServeOptions
    from raycv.inference import predict
    from raycv.serve import build_app
    from raycv.tasks import get_task

    task = get_task("classify")
    batch, meta = first_rows(data, "val", 32)
    pngs = [bytes(png) for png in batch["image"]]
    expected = [answer[0]["class"] for answer in predict(load_model(checkpoint, "classify"),
                                                         list(task.decode(batch, meta)["image"]))]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
    options = ServeOptions(checkpoint=checkpoint, task="classify", min_replicas=1, max_replicas=1, batch_size=8,
                           batch_wait_ms=5, cpus_per_replica=1)
    serve.run(build_app(options), name="raycv", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/classify/predict"
    replicas_before = wait_for(lambda: len(r := serve_replicas()) == 1 and r, 60, "the replica")

    total, kill_after = 160, 40
    answered = threading.Semaphore(0)
    failures: list[str] = []
    lock = threading.Lock()
    kill_time: list[float] = []

    def send(index: int) -> dict:
        attempts, deadline = 0, time.monotonic() + 120
        with httpx.Client(timeout=60) as client:
            while True:
                attempts += 1
                try:
                    response = client.post(url, content=pngs[index % len(pngs)], headers={"content-type": "image/png"})
                    if response.status_code == 200:
                        answered.release()
                        return {"index": index, "attempts": attempts, "done": time.monotonic(),
                                "class": response.json()["predictions"][0][0]["class"]}
                    problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    problem = type(error).__name__
                with lock:
                    failures.append(problem)
                if time.monotonic() > deadline:
                    return {"index": index, "attempts": attempts, "done": time.monotonic(), "class": None,
                            "last_problem": problem}
                time.sleep(0.2)  # the client's back-off before retrying

    def kill_the_replica_under_load() -> None:
        for _ in range(kill_after):
            answered.acquire()
        (victim,) = replicas_before.values()
        ray.kill(victim, no_restart=True)
        kill_time.append(time.monotonic())

    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        killer = pool.submit(kill_the_replica_under_load)
        results = list(pool.map(send, range(total)))
        killer.result()
    replicas_after = wait_for(lambda: len(r := serve_replicas()) == 1 and r, 60, "a replacement replica")
    serve.shutdown()
    return {
        "requests": total,
        "answered": sum(r["class"] is not None for r in results),
        "answered_after_kill": sum(r["class"] is not None and r["done"] > kill_time[0] for r in results),
        "wrong_answers": [r["index"] for r in results if r["class"] != expected[r["index"] % len(pngs)]],
        "failed_attempts": len(failures),
        "failure_kinds": sorted(set(failures)),
        "retried_requests": sum(r["attempts"] > 1 for r in results),
        "replica_before": list(replicas_before),
        "replica_after": list(replicas_after),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="JSON file for what the scenarios observed")
    parser.add_argument("--workdir", required=True, help="a scratch folder (the storage URI points into it)")
    args = parser.parse_args()
    # The test's timeout sends SIGTERM: unwind through `finally`, so every node is shut down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))

    import ray
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's TINY settings
    results: dict = {}
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset progress tables in logs
        results["placement"] = scenario_placement(cluster)
        results["train"] = scenario_train(cluster, Path(args.workdir))
        results["serve"] = scenario_serve(results["train"]["best_checkpoint"], results["train"]["data"])
    finally:
        results["seconds"] = round(time.monotonic() - started, 1)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
