"""`raycv compress_ae eval-photos`, `rd-curve`, `compress-image` and `decompress`."""

from __future__ import annotations

import argparse
import os

from raycv.verbs.photos import add_photo_arguments, photo_names, report_photos


def add_coding_flags(parser: argparse.ArgumentParser) -> None:
    """--refine-steps, the option a trained codec may change when it codes."""
    from raycv.cli import add_inference_flags
    from raycv.tasks.cards import CARDS

    add_inference_flags(parser, CARDS["compress_ae"])


def load_codecs(args: argparse.Namespace) -> list:
    """The --checkpoint(s), with the coding flags given."""
    from raycv.checkpoint import load_model
    from raycv.cli import inference_options_from_args
    from raycv.devices import default_device

    paths = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    options = inference_options_from_args(args)
    return [load_model(path, "compress_ae", default_device(), options) for path in paths]


def add_eval_photos_arguments(parser: argparse.ArgumentParser) -> None:
    add_photo_arguments(parser, "a trained compress_ae checkpoint (repeatable: ae and aegan side by side)",
                        repeat_checkpoint=True)
    add_coding_flags(parser)


def run_eval_photos(args: argparse.Namespace) -> int:
    """bpp, PSNR and SSIM of each checkpoint and of JPEG at no more bits, per held-out photograph"""
    from raycv.inference import predict
    from raycv.tasks import compress_ae

    models = load_codecs(args)
    rows = compress_ae.score_photos(models, predict, photo_names(args.photos), args.out or None)
    return report_photos(rows, "compress_ae on photographs never trained on (whole photos; PSNR/SSIM on RGB; "
                               "JPEG at no more bits than the first checkpoint)", args.out)


def add_rd_curve_arguments(parser: argparse.ArgumentParser) -> None:
    add_photo_arguments(parser, "a trained compress_ae checkpoint (repeatable: one per rate point)",
                        repeat_checkpoint=True)
    add_coding_flags(parser)


def run_rd_curve(args: argparse.Namespace) -> int:
    """mean bpp, PSNR and MS-SSIM of each checkpoint against JPEG's and WebP's curves, and their plot"""
    from raycv.inference import predict
    from raycv.report import table, write_bytes
    from raycv.tasks import compress_ae

    models = load_codecs(args)
    rows = compress_ae.rate_distortion(models, predict, photo_names(args.photos))
    report_photos([row for row in rows if row["image"] == "mean"],
                  "compress_ae against JPEG and WebP: means over the photographs never trained on (RGB)", args.out)
    print(table(compress_ae.against_jpeg(rows), "each model against JPEG at the same bits per pixel (JPEG's curve of "
                                                "means, interpolated)"))
    if args.out:
        write_bytes(os.path.join(args.out, "rate_distortion.png"), compress_ae.rate_distortion_png(rows))
        print(f"plot: {os.path.join(args.out, 'rate_distortion.png')}")
    return 0


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a trained compress_ae checkpoint")
    parser.add_argument("--image", required=True, help="the picture to compress (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="where to write the compressed file")
    add_coding_flags(parser)


def run_compress(args: argparse.Namespace) -> int:
    """compress an image to a file of the model's range-coded latent"""
    import base64

    from raycv.inference import predict, read_image_files
    from raycv.tasks import compress_ae
    from raycv.verbs.files import write_output

    (loaded,) = load_codecs(args)
    image = read_image_files([args.image])[0]
    answer = predict(loaded, [image])[0]
    data = compress_ae.pack_file(loaded.model, base64.b64decode(answer["code"]), answer["height"], answer["width"])
    write_output(args.out, data)
    print(f"{args.out}: {len(data)} bytes, {8 * len(data) / (image.shape[0] * image.shape[1]):.3f} bits per pixel "
          f"({image.shape[1]}x{image.shape[0]})")
    return 0


def add_decompress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the compress_ae checkpoint that compressed the file")
    parser.add_argument("--code", required=True, help="a file `raycv compress_ae compress-image` wrote")
    parser.add_argument("--out", required=True, help="where to write the decoded PNG")


def run_decompress(args: argparse.Namespace) -> int:
    """decode a compressed file back to a PNG"""
    from raycv import storage
    from raycv.checkpoint import load_model
    from raycv.data.images import encode_png
    from raycv.devices import default_device
    from raycv.errors import RaycvError
    from raycv.tasks import compress_ae
    from raycv.verbs.files import write_output

    if not storage.exists(args.code):
        raise RaycvError(f"compressed file not found: {args.code}")
    loaded = load_model(args.checkpoint, "compress_ae", default_device())
    code, height, width = compress_ae.unpack_file(loaded.model, storage.read_bytes(args.code), args.code)
    write_output(args.out, encode_png(compress_ae.decompress(loaded.model, code, height, width)))
    print(f"{args.out}: {width}x{height} decoded from {args.code}")
    return 0


VERBS = {"eval-photos": (add_eval_photos_arguments, run_eval_photos),
         "rd-curve": (add_rd_curve_arguments, run_rd_curve),
         "compress-image": (add_compress_arguments, run_compress),
         "decompress": (add_decompress_arguments, run_decompress)}
