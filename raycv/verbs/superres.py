"""`raycv superres eval-photos` and `raycv superres upscale`."""

from __future__ import annotations

import argparse

from raycv.verbs.photos import add_photo_arguments, photo_names, report_photos


def add_eval_photos_arguments(parser: argparse.ArgumentParser) -> None:
    add_photo_arguments(parser, "a trained superres checkpoint")


def run_eval_photos(args: argparse.Namespace) -> int:
    """PSNR/SSIM on Y, bicubic vs the model, per held-out photograph (scikit-image, scikit-learn)"""
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict
    from raycv.tasks import superres

    loaded = load_model(args.checkpoint, "superres", default_device())
    rows = superres.score_photos(loaded, predict, photo_names(args.photos), args.out or None)
    scale = loaded.dataset_meta["scale"]
    return report_photos(rows, f"superres x{scale} on photographs never trained on (PSNR/SSIM on Y, "
                               f"{scale}-px border shaved)", args.out)


def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained superres checkpoint")
    parser.add_argument("--image", required=True, help="the picture to enlarge (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="where to write the enlarged PNG")


def run_upscale(args: argparse.Namespace) -> int:
    """enlarge one image by the checkpoint's scale and write it as PNG"""
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict, read_image_files
    from raycv.tasks.routes import answer_png
    from raycv.verbs.files import write_output

    loaded = load_model(args.checkpoint, "superres", default_device())
    image = read_image_files([args.image])[0]
    answer = predict(loaded, [image])[0]
    write_output(args.out, answer_png(answer))
    print(f"{args.out}: {image.shape[1]}x{image.shape[0]} -> {answer['width']}x{answer['height']} (x{answer['scale']})")
    return 0


VERBS = {"eval-photos": (add_eval_photos_arguments, run_eval_photos), "upscale": (add_upscale_arguments, run_upscale)}
