"""`raycv dcgan samples`."""

from __future__ import annotations

import argparse

from raycv.errors import RaycvError


def add_samples_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained dcgan checkpoint")
    parser.add_argument("--out", required=True, help="where to write the grid PNG")
    parser.add_argument("--count", type=int, default=64, help="samples (default 64, an 8x8 grid)")
    parser.add_argument("--seed", type=int, default=0, help="noise seeds seed, seed + 1, ...")


def run_samples(args: argparse.Namespace) -> int:
    """write a grid of generated 64x64 samples"""
    from raycv.checkpoint import load_model
    from raycv.data.images import encode_png
    from raycv.tasks import dcgan
    from raycv.verbs.files import write_output

    if not 1 <= args.count <= 1024:
        raise RaycvError(f"invalid --count {args.count}: expected 1..1024")
    loaded = load_model(args.checkpoint, "dcgan")
    write_output(args.out, encode_png(dcgan.sample_grid(loaded.model, args.count, args.seed)))
    print(f"{args.out}: {args.count} samples (seeds {args.seed}..{args.seed + args.count - 1})")
    return 0


VERBS = {"samples": (add_samples_arguments, run_samples)}
