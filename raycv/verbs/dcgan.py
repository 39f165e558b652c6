"""`raycv dcgan samples` and `raycv dcgan score`."""

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


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained dcgan checkpoint")
    parser.add_argument("--classifier", required=True,
                        help="a raycv classify checkpoint trained on the same images (classify synth --param "
                             "image_size=64 draws the shapes dcgan synth does, with their labels)")
    parser.add_argument("--count", type=int, default=1000, help="samples to classify (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="noise seeds seed, seed + 1, ...")
    parser.add_argument("--out", default="", help="also write the numbers as JSON here")


def run_score(args: argparse.Namespace) -> int:
    """how many samples a shape classifier recognises, and how evenly over the classes"""
    import json

    from raycv.checkpoint import load_model
    from raycv.inference import predict
    from raycv.report import table
    from raycv.tasks import dcgan
    from raycv.verbs.files import write_output

    if args.count < 1:
        raise RaycvError(f"invalid --count {args.count}: expected a number of samples >= 1")
    loaded = load_model(args.checkpoint, "dcgan")
    classifier = load_model(args.classifier, "classify")
    if classifier.config.label_smoothing > 0:  # its probabilities stop near 1 - smoothing: p >= 0.9 reads noise
        raise RaycvError(f"classifier {args.classifier} was trained with --label-smoothing "
                         f"{classifier.config.label_smoothing}, which keeps its probabilities near "
                         f"{1 - classifier.config.label_smoothing:.2f}: train it with --label-smoothing 0")
    drawn, learned = (model.dataset_meta.get("background", "textured") for model in (loaded, classifier))
    if drawn != learned:
        raise RaycvError(f"the generator learned shapes on {drawn} backgrounds and the classifier {args.classifier} "
                         f"on {learned} ones: synthesize both with the same --param background")
    census = dcgan.recognisability(loaded.model, classifier, predict, args.count, args.seed)
    print(table([{"class": name, "share": round(share, 4)} for name, share in census["shares"].items()],
                f"{census['samples']} samples: {census['confident']:.1%} classified with p >= {dcgan.CONFIDENT}; "
                f"smallest class {census['min_share']:.1%}, "
                f"distance from uniform {census['distance_from_uniform']:.3f}"
                + (f"; {census['as_asked']:.1%} confidently the class asked for" if "as_asked" in census else "")))
    if args.out:
        write_output(args.out, json.dumps(census, indent=2).encode())
    return 0


VERBS = {"samples": (add_samples_arguments, run_samples), "score": (add_score_arguments, run_score)}
