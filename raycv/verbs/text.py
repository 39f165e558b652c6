"""`raycv captcha examples` and `raycv textrec examples`: both text tasks read lines into strings the
same way, so they share the picture verb."""

from __future__ import annotations

import argparse

from raycv.errors import RaycvError


def add_examples_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained captcha or textrec checkpoint")
    parser.add_argument("--data", required=True, help="a dataset of the checkpoint's task")
    parser.add_argument("--split", default="val")
    parser.add_argument("--count", type=int, default=24, help="lines in the picture")
    parser.add_argument("--out", required=True, help="the PNG to write")


def run_examples(args: argparse.Namespace) -> int:
    """draw a split's first lines with the checkpoint's readings (green right, red wrong) into a PNG"""
    from raycv.checkpoint import load_model
    from raycv.data.images import decode_image
    from raycv.inference import predict
    from raycv.runtime import init_ray
    from raycv.tasks.textrec import save_readings
    from raycv.verbs.files import open_split

    if args.count < 1:
        raise RaycvError(f"invalid --count {args.count}: expected an integer >= 1")
    init_ray()
    loaded = load_model(args.checkpoint)
    rows = open_split(loaded.task, args.data, args.split).take_batch(args.count)
    images = [decode_image(data) for data in rows["image"]]
    save_readings(images, predict(loaded, images), rows["text"], args.out)
    print(f"{args.count} readings: {args.out}")
    return 0


VERBS = {"examples": (add_examples_arguments, run_examples)}
