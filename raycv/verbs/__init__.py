"""Verbs only some tasks have (`raycv segment danmu`, `raycv search gallery`, ...), beside the ones
every task has (synth, train, eval, tune, compress, predict, serve; raycv/cli.py).

One module per task (captcha and textrec share raycv/verbs/text.py), each exposing
`VERBS = {name: (add_arguments, run)}`: add_arguments(parser) declares the verb's flags, run(args)
does the work and returns the exit status, and the first line of run's docstring is the verb's help.
A run handles arguments, loading and printing, and calls plain functions of the task's module for
the rest. The modules import only the standard library at the top, so that building the parser of
`raycv TASK VERB --help` loads no torch, numpy or Ray; each run imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

TASK_VERB_MODULES = {
    "classify": "raycv.verbs.classify",
    "captcha": "raycv.verbs.text",
    "textrec": "raycv.verbs.text",
    "segment": "raycv.verbs.segment",
    "superres": "raycv.verbs.superres",
    "inpaint": "raycv.verbs.inpaint",
    "compress_ae": "raycv.verbs.compress_ae",
    "dcgan": "raycv.verbs.dcgan",
    "search": "raycv.verbs.search",
}


def task_verbs(task_name: str) -> dict[str, tuple[AddArguments, Run]]:
    """The verbs of `task_name` beyond the common ones: {name: (add_arguments, run)}, {} for none."""
    if task_name not in TASK_VERB_MODULES:
        return {}
    return importlib.import_module(TASK_VERB_MODULES[task_name]).VERBS
