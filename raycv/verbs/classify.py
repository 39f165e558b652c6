"""`raycv classify models`."""

from __future__ import annotations

import argparse


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int, default=1000, help="class count the parameters are counted at")


def run_models(args: argparse.Namespace) -> int:
    """list the model names --model takes, with parameter counts"""
    from raycv.report import table
    from raycv.tasks.classify import model_table

    rows = [{**row, "parameters": f"{row['parameters'] / 1e6:.2f} M"} for row in model_table(args.classes)]
    print(table(rows, f"classify models ({args.classes} classes)"))
    return 0


VERBS = {"models": (add_models_arguments, run_models)}
