"""Beyond one machine: a 3-node Ray cluster simulated on this one (ray.cluster_utils.Cluster).

Training spreads over nodes and keeps its checkpoints on the storage path only; losing a node
mid-training costs one restart from the last checkpoint; killing the Serve replica under load loses
no request a client retries.

A process holds one Ray instance and the suite's session instance may already be up, so the cluster
lives in a child process (tests/multinode_cluster.py) that reports what it saw as JSON; these tests
assert on it. The child is its own process group, which is killed after it exits, so no Ray process
outlives the module, and the address file a Cluster writes (/tmp/ray/ray_current_cluster) is restored
so the session instance's own address discovery is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "multinode_cluster.py"
TIMEOUT_S = 480


def log_tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    from ray._private.utils import get_ray_address_file

    workdir = tmp_path_factory.mktemp("multinode")
    out, log = workdir / "result.json", workdir / "cluster.log"
    address_file = Path(get_ray_address_file(None))
    address_before = address_file.read_text() if address_file.exists() else None
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    with open(log, "w") as log_file:
        child = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--workdir", str(workdir)],
                                 stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=SCRIPT.parents[1],
                                 start_new_session=True)
        try:
            returncode = child.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.terminate()  # the child shuts its cluster down on SIGTERM
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            returncode = None
        finally:
            # anything the cluster left behind is still in the child's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            if address_before is None:
                address_file.unlink(missing_ok=True)
            else:
                address_file.write_text(address_before)
    result = json.loads(out.read_text()) if out.exists() else {}
    if returncode != 0 or not {"train", "serve"} <= set(result):
        status = f"timed out after {TIMEOUT_S} s" if returncode is None else f"exited with {returncode}"
        pytest.fail(f"the simulated cluster run {status}; it reported {result}\n--- log tail ---\n{log_tail(log)}")
    return result


def test_gpu_layouts_a_fixed_cluster_cannot_place_are_refused_naming_both_numbers(cluster_run):
    seen = cluster_run["placement"]
    assert seen["may_grow"] is False  # no autoscaler: the check applies
    assert "asks for GPUs, but this cluster has none" in seen["no_gpus"] and "CPU 1" in seen["no_gpus"]
    assert "needs 8 x 1 = 8 GPUs, but this cluster has 4" in seen["eight_of_four"]
    assert seen["four_of_four"] is None and seen["eight_halves"] is None
    assert "needs 2 x 3 = 6 GPUs" in seen["two_of_three"]  # one node of 4 holds one worker of 3


def test_training_workers_are_spread_over_worker_nodes(cluster_run):
    train = cluster_run["train"]
    first, second = train["first_attempt_nodes"], train["second_attempt_nodes"]
    assert len(first) == 2 and len(set(first)) == 2, first  # one DDP worker per node
    assert train["head_node"] not in first + second
    assert set(train["workers_per_epoch"]) == {2}


def test_checkpoints_live_on_the_storage_path(cluster_run):
    train = cluster_run["train"]
    assert train["run_dir"].startswith(train["storage_uri"])
    assert train["best_checkpoint"].startswith(train["run_dir"])
    files = train["run_files"]
    assert "checkpoint_manager_snapshot.json" in files and "metrics.csv" in files
    assert any(name.startswith("checkpoint_") and name != "checkpoint_manager_snapshot.json" for name in files)


def test_node_loss_resumes_from_the_last_checkpoint_and_finishes(cluster_run):
    train = cluster_run["train"]
    assert train["removed_node"] in train["first_attempt_nodes"]
    # the restarted worker group runs on the node that joined after the loss, which never had a
    # checkpoint on a local disk: it restored from storage
    assert train["replacement_node"] in train["second_attempt_nodes"]
    assert train["removed_node"] not in train["second_attempt_nodes"]
    resumed_at = train["resumed_at"]
    assert len(resumed_at) == 1 and resumed_at[0] == train["checkpoints_before_loss"][-1] + 1, train
    assert train["epochs"] == [1, 2, 3]  # epoch numbering went on; nothing restarted from epoch 1
    losses = train["train_loss"]
    assert losses[-1] < losses[0], losses


def test_killed_serve_replica_loses_no_retried_request(cluster_run):
    serve = cluster_run["serve"]
    assert serve["replica_before"] != serve["replica_after"]  # Serve replaced the killed replica
    assert serve["answered"] == serve["requests"], serve
    assert serve["wrong_answers"] == [], serve  # answers match the model run locally
    assert serve["answered_after_kill"] > 0, serve  # the app came back and served the rest of the load
    # a request in flight at the kill may fail (HTTP 500): those are the ones the client retried
    assert serve["retried_requests"] <= serve["failed_attempts"]
    assert all(kind.startswith("HTTP 5") or kind.endswith("Error") for kind in serve["failure_kinds"]), serve
