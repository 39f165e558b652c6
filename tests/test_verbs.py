"""Task-specific verbs (raycv/verbs/): found by task name, light to import, and in step with what they
spell out to stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raycv.verbs import TASK_VERB_MODULES, task_verbs


@pytest.mark.parametrize("module", sorted(set(TASK_VERB_MODULES.values())))
def test_importing_a_verbs_module_loads_no_torch_numpy_ray_or_task(module):
    heavy = ("torch", "numpy", "ray", "pyarrow", "raycv.tasks", "raycv.data", "raycv.models")
    loaded = subprocess.run([sys.executable, "-c", f"import sys, {module}; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in loaded if name in heavy or name.startswith(tuple(f"{package}." for package in heavy))]


def test_task_verbs_come_with_a_help_line_and_tasks_without_verbs_have_none():
    for task_name in TASK_VERB_MODULES:
        verbs = task_verbs(task_name)
        assert verbs and all(run.__doc__ and run.__doc__.strip() for _, run in verbs.values()), task_name
    assert task_verbs("boxreg") == {} and task_verbs("detect") == {}
    assert task_verbs("captcha") is task_verbs("textrec")


def test_search_index_kinds_match_the_index():
    from raycv.index import KINDS
    from raycv.verbs.search import INDEX_KINDS

    assert INDEX_KINDS == KINDS
