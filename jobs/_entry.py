"""Shared start-up of the job entrypoints: `python jobs/VERB.py TASK [options]` runs `raycv TASK VERB`.

Under `ray job submit --working-dir .`, RAY_ADDRESS points at the cluster, so the work runs there.
Give --data/--out/--storage as absolute paths or storage URIs: the job's working directory is a
temporary copy that is deleted with the job.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir, if not installed


def run_verb(verb: str) -> None:
    from raycv.cli import main

    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: python jobs/{verb}.py TASK [options]   (e.g. python jobs/{verb}.py classify --help)")
    sys.exit(main([sys.argv[1], verb, *sys.argv[2:]]))
