"""`raycv inpaint eval-photos` and `raycv inpaint fill`."""

from __future__ import annotations

import argparse

from raycv.verbs.photos import add_photo_arguments, photo_names, report_photos


def add_eval_photos_arguments(parser: argparse.ArgumentParser) -> None:
    add_photo_arguments(parser, "a trained inpaint checkpoint")


def run_eval_photos(args: argparse.Namespace) -> int:
    """PSNR inside the hole, cv2.inpaint (Telea) vs the model, on held-out photographs"""
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict
    from raycv.tasks import inpaint

    loaded = load_model(args.checkpoint, "inpaint", default_device())
    rows = inpaint.score_photos(loaded, predict, photo_names(args.photos), args.out or None)
    meta = loaded.dataset_meta
    return report_photos(rows, f"inpaint: {meta['hole_size']}-px holes in {meta['image_size'][0]}-px crops of "
                               f"photographs never trained on ({inpaint.PHOTO_CROPS} per photo; "
                               "PSNR inside the hole, RGB)",
                         args.out)


def add_fill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained inpaint checkpoint")
    parser.add_argument("--image", required=True, help="the picture (PNG, JPEG, ...)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="a mask image of the same size: white (> 127) where to fill")
    where.add_argument("--hole", help="a rectangle to fill: X,Y,WIDTH,HEIGHT in pixels")
    parser.add_argument("--out", required=True, help="where to write the filled PNG")


def run_fill(args: argparse.Namespace) -> int:
    """fill the masked part of an image and write it as PNG"""
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict, read_image_files
    from raycv.tasks import inpaint
    from raycv.tasks.routes import answer_png
    from raycv.verbs.files import write_output

    loaded = load_model(args.checkpoint, "inpaint", default_device())
    image = read_image_files([args.image])[0]
    if args.mask:
        hole = inpaint.check_mask(read_image_files([args.mask], mode="L")[0], image.shape)
    else:
        hole = inpaint.parse_hole(args.hole, image.shape)
    answer = predict(loaded, [inpaint.with_hole(image, hole)])[0]
    write_output(args.out, answer_png(answer))
    print(f"{args.out}: filled {answer['hole_pixels']} pixels of {image.shape[1]}x{image.shape[0]}")
    return 0


VERBS = {"eval-photos": (add_eval_photos_arguments, run_eval_photos), "fill": (add_fill_arguments, run_fill)}
