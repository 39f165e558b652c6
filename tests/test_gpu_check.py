"""The device check (`python jobs/bench.py gpu-check`) rehearsed on the CPU with --dry, so that it cannot rot
between GPU runs: every check is there, and every one passes through its CPU equivalent (bf16 and fp16 autocast
on the CPU, gloo DDP on CPU workers, fractional CPUs for Tune trials, a Serve replica with num_gpus 0).

The check starts its own local Ray, so it runs in a child process that is its own process group, killed after it
exits so that none of its Ray processes outlives the test; RAY_ADDRESS is left out of its environment so it
cannot join the session's instance (it asks for a local Ray anyway).
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

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {"bf16_train_step", "fp16_gradscaler_train_step", "torch_compile", "ddp_2_workers", "tune_half_gpu_trials",
          "serve_half_gpu", "eval_metrics_amp_on_off", "crnn_bf16_train_step"}
# Four small Ray Train runs (DDP, two Tune trials, a bf16 fit) and a Serve app, each paying Ray's start-up: about
# 4 minutes on 2 idle cores; one run measured 8 where other work shared them.
TIMEOUT_S = 720


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_dry_gpu_check_runs_every_check_and_passes(tmp_path):
    out, log = tmp_path / "gpu.json", tmp_path / "gpu-check.log"
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    with open(log, "w") as log_file:
        child = subprocess.Popen([sys.executable, "jobs/bench.py", "gpu-check", "--dry", "--out", str(out)],
                                 stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            returncode = child.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    results = json.loads(out.read_text()) if out.exists() else {}
    rows = {row["check"]: row for row in results.get("gpu-check", [])}
    assert set(rows) == CHECKS, f"exit status {returncode}; checks reported: {sorted(rows)}\n{tail}"
    failed = {name: row["detail"] for name, row in rows.items() if row["ok"] is not True}
    assert not failed and returncode == 0, f"exit status {returncode}; failed: {failed}\n{tail}"
    assert results["dry"] and results["machine"]["gpu"] is None  # CUDA hidden, whatever the machine has
    assert all(row["seconds"] >= 0 for row in rows.values())
    assert rows["torch_compile"]["detail"]["backend"] == "aot_eager"
    assert rows["ddp_2_workers"]["detail"]["workers"] == 2
    assert rows["serve_half_gpu"]["detail"]["errors"] == 0
