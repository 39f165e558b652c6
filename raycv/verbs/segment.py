"""`raycv segment danmu`: the book's danmu picture (chapter 6.5) from a segment checkpoint."""

from __future__ import annotations

import argparse


def add_danmu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained segment checkpoint")
    parser.add_argument("--image", required=True, help="the picture (PNG, JPEG, ...)")
    parser.add_argument("--text", action="append", required=True, help="a comment (repeatable)")
    parser.add_argument("--out", required=True, help="where to write the PNG")
    parser.add_argument("--offset", type=float, default=0.0, help="time step of the scroll (frames 0, 1, 2, ...)")
    parser.add_argument("--seed", type=int, default=0, help="picks each comment's colour, start and speed")


def run_danmu(args: argparse.Namespace) -> int:
    """draw comments scrolling behind the objects the model segments (textbook 6.5)"""
    import io

    from PIL import Image

    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict, read_image_files
    from raycv.tasks import segment
    from raycv.verbs.files import write_output

    loaded = load_model(args.checkpoint, "segment", default_device())
    image = read_image_files([args.image])[0]
    answer = predict(loaded, [image])[0]
    png = io.BytesIO()
    Image.fromarray(segment.danmu_from_answer(image, answer, args.text, args.offset, args.seed)).save(png, format="PNG")
    write_output(args.out, png.getvalue())
    covered = float(segment.answer_foreground(answer).mean())
    print(f"{args.out}: {len(args.text)} comment(s) behind {covered:.1%} foreground")
    return 0


VERBS = {"danmu": (add_danmu_arguments, run_danmu)}
