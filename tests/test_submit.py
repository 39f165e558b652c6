"""`raycv TASK VERB ... --submit`: the same command line as a Ray job."""

from __future__ import annotations

import subprocess
import sys

from raycv.submit import job_command, project_runtime_env


def test_the_job_runs_the_command_line_without_the_submit_flags():
    argv = ["classify", "train", "--data", "s3://b/d", "--submit", "--address", "http://h:8265", "--epochs", "2"]
    assert job_command(argv) == ["classify", "train", "--data", "s3://b/d", "--epochs", "2"]
    assert job_command(["classify", "eval", "--address=http://h:8265", "--submit"]) == ["classify", "eval"]


def test_runtime_env_uploads_the_checkout_without_local_outputs():
    runtime_env = project_runtime_env()
    from pathlib import Path

    assert (Path(runtime_env["working_dir"]) / "raycv" / "cli.py").is_file()
    assert {".venv/", "data/", "runs/", ".git/"} <= set(runtime_env["excludes"])


def test_unreachable_address_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "raycv.cli", "classify", "synth", "--out", str(tmp_path / "d"),
                             "--submit", "--address", "http://127.0.0.1:9"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raycv: error: no Ray cluster answers at --address "
                                                   "http://127.0.0.1:9"), result.stderr


def test_an_address_that_is_not_a_ray_dashboard_is_one_line_and_exit_2(tmp_path):
    """A web server or proxy answers, but not Ray's Jobs API: Ray's client would raise a RuntimeError."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_port}"
    try:
        result = subprocess.run([sys.executable, "-m", "raycv.cli", "classify", "synth", "--out", str(tmp_path / "d"),
                                 "--submit", "--address", address], capture_output=True, text=True, timeout=30,
                                cwd=tmp_path)
    finally:
        server.shutdown()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"raycv: error: no Ray dashboard at --address {address} (it answered HTTP 404 to "
                        "/api/version); start one with `ray start --head` or pass the dashboard URL, e.g. "
                        "http://HEAD:8265")
