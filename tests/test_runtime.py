"""Which of the lines Ray forwards from its processes reach the user of a quiet run, and which Ray a raycv
command without RAY_ADDRESS runs on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from raycv.runtime import quiet_ray_logs

# As a 2-worker `classify train` printed them with Ray 2.60 before they were filtered,
NOISE = [
    "",
    "✔️  Dataset train_0359Njm7EjUfukqJCAVLOE_0 execution finished in 1.40 seconds",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "/venv/lib/python3.11/site-packages/ray/data/_internal/execution/interfaces/execution_options.py:436: "
    "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated and will be removed after "
    "January 2027. Use `ExecutionOptions.label_selector` to constrain Ray Data work to labeled nodes.",
    "  self.exclude_resources = exclude_resources",
    "[2026-12-05 11:13:51,084 E 31119 31210] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: '0f9c35ba3b35498b702268c201000000' has constructor arguments in the object store and max_restarts > 0. "
    "If the arguments in the object store go out of scope or are lost, the actor restart will fail.",
    "[2026-12-05 10:31:49,790 E 3146 3146] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill actor "
    "48397b9e3a191920cfd10be401000000, return status: Invalid: KillActor RPC failed for actor "
    "48397b9e3a191920cfd10be401000000: RpcError: RPC error: Socket closed rpc_code: 14",
    # a Serve app shutting down,
    "Task ServeController.graceful_shutdown failed. There are infinite retries remaining, so the task will be "
    "retried. Error: The actor is dead because it was killed by `ray.kill`.",
    # and a 2-trial `classify tune`:
    "Detected that the Ray Train controller actor (43f1ed5298f666298f2bb31c01000000) is dead. Cleaning up "
    "placement group = [PlacementGroupID(5da2cbb307be1e9ae6507c19fc4b01000000)] created by this run.",
    "WARNING: 14 PYTHON worker processes have been started on node: 622fbd317d2332594cb1a9a3e542e349a4e965b6 with "
    "address: 192.0.2.2, which is 7x the maximum expected startup concurrency (2). This could be a result of using "
    "a large number of actors, tasks blocked in ray.get() calls, or tasks with fractional CPU requests.",
]
KEPT = [
    "[raycv] epoch=1  train_loss=2.443  val_accuracy=0.1016  val_loss=2.311  lr=0.00172  workers=2",
    "Traceback (most recent call last):",
    '  File "/work/raycv/train.py", line 240, in train_loop',
    "RuntimeError: raycv: injected fault at the start of epoch 2 (--fail-at-epoch 2)",
    "Task RayTrainWorker.run failed. There are infinite retries remaining, so the task will be retried. Error: "
    "The worker died unexpectedly while executing this task.",
    "⚠️  Dataset train_0359Njm7EjUfukqJCAVLOE_0 execution failed",
    "/work/raycv/tasks/detect.py:12: DeprecationWarning: something raycv itself still uses",
]


def test_a_quiet_run_forwards_everything_but_the_known_noise():
    from ray._private import ray_logging

    quiet_ray_logs()
    for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        batch = {"ip": "10.0.0.1", "pid": 4242, "job": "01000000", "is_err": True, "lines": NOISE + KEPT}
        printed = [line for out in deduplicator.deduplicate(batch) for line in out["lines"]]
        assert printed == KEPT


def test_without_ray_address_a_command_starts_its_own_ray_past_a_stale_address_file():
    """A `ray start` killed before `ray stop` leaves its address in <temp dir>/ray/ray_current_cluster; ray.init
    without an address would join it and refuse num_cpus. raycv starts a Ray of its own, sized as asked."""
    # Short and private: Ray's socket paths live under it (at most 107 bytes) and its address file is read there.
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        os.makedirs(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as stale:
            stale.write("127.0.0.1:1")  # nothing listens on port 1
        script = ("import json, ray\nfrom raycv.runtime import init_ray\ninit_ray(num_cpus=1)\n"
                  "print(json.dumps(ray.cluster_resources()))")
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"RAY_TMPDIR": temp}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["CPU"] == 1.0
    finally:
        shutil.rmtree(temp, ignore_errors=True)
