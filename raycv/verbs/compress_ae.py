"""`raycv compress_ae eval-photos`."""

from __future__ import annotations

import argparse

from raycv.verbs.photos import add_photo_arguments, photo_names, report_photos


def add_eval_photos_arguments(parser: argparse.ArgumentParser) -> None:
    add_photo_arguments(parser, "a trained compress_ae checkpoint (repeatable: ae and aegan side by side)",
                        repeat_checkpoint=True)


def run_eval_photos(args: argparse.Namespace) -> int:
    """bpp, PSNR and SSIM of each checkpoint and of JPEG at no more bits, per held-out photograph"""
    from raycv.checkpoint import load_model
    from raycv.devices import default_device
    from raycv.inference import predict
    from raycv.tasks import compress_ae

    models = [load_model(path, "compress_ae", default_device()) for path in args.checkpoint]
    rows = compress_ae.score_photos(models, predict, photo_names(args.photos), args.out or None)
    return report_photos(rows, "compress_ae on photographs never trained on (whole photos; PSNR/SSIM on RGB; "
                               "JPEG at no more bits than the first checkpoint)", args.out)


VERBS = {"eval-photos": (add_eval_photos_arguments, run_eval_photos)}
