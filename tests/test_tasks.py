"""The Task interface: every task's card (the facts the command line reads without torch) agrees with the
task module, and the base class gives every optional hook its one default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raycv.errors import RaycvError
from raycv.tasks import TASK_MODULES, get_task
from raycv.tasks.cards import CARDS


@pytest.mark.parametrize("name", list(TASK_MODULES))
def test_card_matches_its_task(name):
    import importlib

    module = importlib.import_module(TASK_MODULES[name])
    task = get_task(name)
    assert CARDS[name] is task.card and task.name == name
    models = getattr(module, "MODELS", getattr(module, "BACKBONES", None))
    if models is not None:  # tasks that name several networks keep them in one table
        assert tuple(models) == task.model_names
    assert task.default_config().model in task.model_names
    assert set(task.train_options) <= set(task.default_config().extra)


def test_search_card_defaults_are_the_books_cosface():
    from raycv.models.embedding import COSFACE_MARGIN, COSFACE_SCALE, HEADS

    options = CARDS["search"].train_options
    assert (options["cosface_scale"][0], options["cosface_margin"][0]) == (COSFACE_SCALE, COSFACE_MARGIN)
    assert options["head"][0] in HEADS and all(head in options["head"][1] for head in HEADS)


def test_model_name_check_and_no_real_data_error_are_the_base_classes():
    task = get_task("superres")
    with pytest.raises(RaycvError, match=r"unknown model 'vgg99' for task superres; valid models: residual, espcn"):
        task.build_model(task.default_config().replace(model="vgg99"), {})
    with pytest.raises(RaycvError, match=r"/photos is not a raycv superres dataset .*images_dir=/photos"):
        task.read("/photos", task.default_config())
    # Optional hooks have their defaults: no serve state, no extra files, parameters as given.
    assert task.split_params("val", {"a": 1}, seed=0) == {"a": 1} and task.export_split("x", "val", {}) is None
    with pytest.raises(RaycvError, match="keeps no serve state"):
        task.open_route_state("x", {})


def test_parsing_any_command_line_imports_neither_torch_nor_ray():
    """What makes `--help` and argument errors answer at once: the parser of every task and verb is built
    from raycv.config, the cards and the light verb modules alone."""
    code = ("import sys\n"
            "from raycv.cli import build_parser\n"
            "build_parser().parse_args(['classify', 'train', '--data', 'x'])\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'numpy', 'torchvision') if m in sys.modules)\n"
            "print(','.join(heavy) or 'none')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
