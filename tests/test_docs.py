"""The documentation: the MkDocs site builds in strict mode (no broken link or anchor, no page missing
from the navigation), and every relative link in README.md points to a file that exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")".
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def relative_links(markdown: str) -> list[str]:
    """Link targets outside fenced code blocks that are paths in the repository, without #fragments."""
    targets = []
    for target in MARKDOWN_LINK.findall(FENCE.sub("", markdown)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http:, https:, mailto: ... and in-page anchors
        targets.append(target.split("#", 1)[0])
    return targets


def test_mkdocs_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "No module named mkdocs" not in output, \
        "mkdocs is not installed: pip install mkdocs-material (the docs build is part of the tests)"
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert (site / "index.html").is_file(), output


def test_relative_links_in_the_readme_point_to_files_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = relative_links(readme)
    assert targets, "README.md has no relative links (expected links to docs/)"
    missing = sorted({target for target in targets if not (ROOT / target).exists()})
    assert not missing, f"README.md links to files that do not exist: {', '.join(missing)}"


def test_the_link_finder_sees_links_and_images_but_not_code_or_urls():
    markdown = ("See [install](docs/install.md#gpu) and ![fig](docs/a.png \"title\").\n"
                "[web](https://ray.io) [top](#raycv)\n```bash\necho [x](not/a/link.md)\n```\n")
    assert relative_links(markdown) == ["docs/install.md", "docs/a.png"]
