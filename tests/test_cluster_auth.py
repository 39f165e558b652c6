"""The local-cluster commands of docs/cluster.md, run as a new user runs them: an empty home folder,
Ray 2.60's token authentication, `ray start --head` and `ray job submit` of a small synth job.

The commands are read from the page, so the page cannot drift from what works. The test changes only
what must differ on a shared machine: private ports and temp dir for `ray start`, a small dataset in a
temporary folder. It skips the training job (minutes on two cores; tests/test_train.py covers the loop)
and, in place of `ray stop`, which stops every Ray on the machine (this test session's own included),
it ends only the processes of the cluster it started."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "cluster.md"
SECTION = "## A local cluster"
DOC_DASHBOARD = "http://127.0.0.1:8265"
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")

# The cluster's processes are found through /proc (see cluster_processes).
pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux's /proc")


def guide_commands() -> list[str]:
    """The first bash block of SECTION, one string per command (continuation lines joined)."""
    text = GUIDE.read_text()
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in re.sub(r"\\\n\s*", "", block).splitlines() if line.strip()]


def adapt(command: str, ports: dict[str, int], temp_dir: str, out: str) -> str | None:
    """The guide's command as this test runs it; None for the ones it leaves out (see the module doc)."""
    argv = shlex.split(command)
    if argv[:2] == ["source", ".venv/bin/activate"]:
        return None  # the test puts the running interpreter's bin/ first on PATH instead
    if argv[:2] in (["export", "RAY_AUTH_MODE=token"], ["ray", "get-auth-token"]):
        return command
    if argv[:3] == ["ray", "start", "--head"]:
        return (f"{command} --port {ports['gcs']} --dashboard-port {ports['dashboard']} "
                f"--ray-client-server-port {ports['client']} --dashboard-agent-listen-port {ports['agent']} "
                f"--temp-dir {temp_dir} --object-store-memory {256 * 1024 * 1024}")
    if argv[:3] == ["ray", "job", "submit"] and "jobs/synth.py" in argv:
        command = command.replace(DOC_DASHBOARD, f"http://127.0.0.1:{ports['dashboard']}")
        command = command.replace("$PWD/data/classify-job", out)
        return re.sub(r"--train-size \d+ --val-size \d+", "--train-size 64 --val-size 16", command)
    if argv[:3] == ["ray", "job", "submit"] and "jobs/train.py" in argv:
        return None
    if argv == ["ray", "stop"]:
        return None
    raise AssertionError(f"docs/cluster.md's local section has a command this test does not know: {command!r}")


def clean_environment(home: Path) -> dict[str, str]:
    """This machine's environment with a fresh HOME, no Ray auth settings and no cluster address."""
    env = {key: value for key, value in os.environ.items() if key not in AUTH_VARIABLES}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    return env


def cluster_processes(temp_dir: str, session_id: int) -> list[int]:
    """Processes of the cluster this test started, and of no other Ray: those in the session the script
    ran in (Ray's processes stay in the session of the `ray start` that made them) and any whose
    command line names its temp dir (every process of a node started with --temp-dir does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            in_session = os.getsid(int(entry.name)) == session_id
            names_temp_dir = temp_dir.encode() in (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if in_session or names_temp_dir:
            found.append(int(entry.name))
    return found


def stop_cluster(temp_dir: str, session_id: int, grace_s: float = 5) -> None:
    """SIGTERM to the cluster's processes (what `ray stop` sends), SIGKILL to any left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_processes(temp_dir, session_id):
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while cluster_processes(temp_dir, session_id) and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.fixture
def guide_run(tmp_path):
    """Runs the guide's local-cluster commands; yields what the checks need (the finished script, its
    environment, the dashboard URL, the dataset folder) with the cluster still up, and stops it after."""
    home = tmp_path / "home"
    home.mkdir()
    # Short: Ray puts unix sockets under the temp dir, and their paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rayauth-", dir="/tmp")
    ports = {name: free_port() for name in ("gcs", "dashboard", "client", "agent")}
    out = str(tmp_path / "classify-job")
    commands = [adapted for command in guide_commands() if (adapted := adapt(command, ports, temp_dir, out))]
    env = clean_environment(home)
    script = subprocess.Popen(["bash", "-euo", "pipefail", "-c", "\n".join(commands)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = script.communicate(timeout=240)
        yield {"returncode": script.returncode, "output": output, "env": env, "out": Path(out),
               "dashboard": f"http://127.0.0.1:{ports['dashboard']}"}
    finally:
        script.kill()
        stop_cluster(temp_dir, script.pid)
        assert not cluster_processes(temp_dir, script.pid), "processes of the test's cluster outlived it"


@pytest.mark.timeout(300)
def test_guide_local_cluster_commands_run_a_job_with_token_auth_in_an_empty_home(guide_run):
    env, dashboard, tail = guide_run["env"], guide_run["dashboard"], guide_run["output"][-3000:]
    assert guide_run["returncode"] == 0, f"the guide's commands failed:\n{tail}"
    assert (Path(env["HOME"]) / ".ray" / "auth_token").is_file(), "ray get-auth-token --generate wrote no token"
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", guide_run["output"])
    assert job_id, tail
    assert guide_run["out"].is_dir() and any(guide_run["out"].iterdir()), f"no dataset at {guide_run['out']}"

    # The job's final state, asked the way a script would (JobSubmissionClient), with the token.
    asked = subprocess.run(
        [sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient; "
                               "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)",
         dashboard, job_id.group(1)],
        env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=60)
    assert asked.stdout.strip().splitlines()[-1:] == ["SUCCEEDED"], asked

    # The cluster really wants the token: the same request from a shell without RAY_AUTH_MODE=token
    # sends none and is refused, as the guide says.
    refused = subprocess.run(["ray", "job", "status", "--address", dashboard, job_id.group(1)],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr, refused

    # The same job through raycv's own flag: `raycv ... --submit` streams the job's logs and exits as it does.
    out = guide_run["out"].with_name("classify-submit")
    submitted = subprocess.run(
        [sys.executable, "-m", "raycv.cli", "classify", "synth", "--out", str(out), "--train-size", "64",
         "--val-size", "16", "--submit", "--address", dashboard],
        cwd=ROOT, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=180)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    assert "classify dataset written to" in submitted.stdout and "SUCCEEDED" in submitted.stderr, submitted.stderr
    assert (out / "manifest.json").is_file()


def test_adapt_knows_every_command_of_the_guide_and_keeps_the_auth_steps():
    commands = guide_commands()
    assert commands[-1] == "ray stop"
    ports = {"gcs": 1, "dashboard": 2, "client": 3, "agent": 4}
    kept = [adapt(command, ports, "/tmp/x", "/tmp/out") for command in commands]
    assert [command for command in kept if command][:2] == ["export RAY_AUTH_MODE=token",
                                                         "ray get-auth-token --generate > /dev/null"]
    assert sum("ray job submit" in command for command in commands) == 2
