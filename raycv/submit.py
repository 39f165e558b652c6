"""`raycv TASK VERB ... --submit [--address URL]`: the same command as a Ray job on a cluster.

The command line is sent as it was typed, minus the submit flags, with the project's runtime_env: the
working directory is the checkout (so the cluster runs this code) with the excludes of
cluster/runtime_env.yaml, the one list `ray job submit --runtime-env` uses too. The job's logs stream
here until it ends; Ctrl-C detaches and leaves the job running. The exit status follows the job's.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from raycv.errors import RaycvError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the dashboard of a `ray start --head` on this machine
CONNECT_TIMEOUT_S = 10
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV_FILE = PROJECT_ROOT / "cluster" / "runtime_env.yaml"
SUBMIT_FLAGS = {"--submit": 0, "--address": 1}  # flag -> values it takes


def job_address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def job_command(argv: list[str]) -> list[str]:
    """`argv` without the submit flags (--address URL or --address=URL)."""
    command, skip = [], 0
    for word in argv:
        if skip:
            skip -= 1
            continue
        flag = word.split("=", 1)[0]
        if flag in SUBMIT_FLAGS:
            skip = 0 if "=" in word else SUBMIT_FLAGS[flag]
            continue
        command.append(word)
    return command


def project_runtime_env() -> dict[str, Any]:
    """The checkout as the working directory, when raycv runs from one; an installed raycv (a cluster
    image) runs its own copy."""
    import yaml

    if not RUNTIME_ENV_FILE.is_file():
        return {}
    runtime_env = yaml.safe_load(RUNTIME_ENV_FILE.read_text())
    return {**runtime_env, "working_dir": str(PROJECT_ROOT)}


def connect(address: str):
    """A JobSubmissionClient, or one line naming the address when no Ray dashboard answers there within
    CONNECT_TIMEOUT_S (Ray's own client retries for much longer)."""
    import requests
    from ray.job_submission import JobSubmissionClient

    advice = "start one with `ray start --head` or pass the dashboard URL, e.g. http://HEAD:8265"
    try:
        answer = requests.get(f"{address.rstrip('/')}/api/version", timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as problem:
        raise RaycvError(f"no Ray cluster answers at --address {address} ({type(problem).__name__}); "
                         f"{advice}") from None
    if answer.status_code == 404:  # a web server, a proxy: not a Ray dashboard (an auth refusal is Ray's to say)
        raise RaycvError(f"no Ray dashboard at --address {address} (it answered HTTP 404 to /api/version); {advice}")
    return JobSubmissionClient(address)


async def stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def submit(argv: list[str], address: str | None) -> int:
    """Submit `raycv ARGV` (minus the submit flags) as a Ray job and follow it; the job's exit status."""
    from ray.job_submission import JobStatus

    address = job_address(address)
    client = connect(address)
    entrypoint = shlex.join(["python", "-m", "raycv.cli", *job_command(argv)])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=project_runtime_env())
    print(f"raycv: submitted job {job_id} to {address}: {entrypoint}", file=sys.stderr, flush=True)
    try:
        asyncio.run(stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"raycv: detached; the job goes on. Follow it with `ray job logs --address {address} -f {job_id}`, "
              f"stop it with `ray job stop --address {address} {job_id}`", file=sys.stderr)
        return 130
    status = client.get_job_status(job_id)
    print(f"raycv: job {job_id} {status.value}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1
