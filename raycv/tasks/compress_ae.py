"""Learned image compression (textbook chapter 8): a ResNet-18-encoder autoencoder with a quantized,
range-coded latent (`--model ae`), the AE+GAN variant (`--model aegan`) trained with the book's
feature-matching loss plus the adversarial term the book forgot, and a codec trained for rate and
distortion together (`--model factorized`, Ballé et al. 2018's factorized prior, raycv.models.codec): its
loss is rd_lambda x 255^2 x MSE + the bits per pixel its learned prior estimates, one model per lambda.

Bits per pixel are real: the latent's integer symbols are range-coded (constriction) with the
per-channel symbol probabilities the model learned during training, and bpp is the length of that
bitstream (plus a 5-byte header: the latent's size and a flag for grey images, which decode to grey) over
the image's pixels. Quality is PSNR and SSIM on RGB.

Data: dead-leaves crops (raycv.data.natural) or, with --param images_dir=DIR, crops of any image folder.

Training options (Task.train_options): --loss mse|l1 (reconstruction), --latent-channels and --levels
(ae, aegan: the latent's channels and symbols per value), --feature-matching-weight and
--adversarial-weight (aegan only), --rd-lambda (factorized only).

Metrics (val): psnr (ranks checkpoints), ssim, bpp, latent_per_pixel (symbols per pixel) and the
reconstruction loss. `score_photos` scores whole held-out photographs beside JPEG at the same or fewer
bits (`raycv compress_ae eval-photos --checkpoint A [--checkpoint B]`, raycv/verbs/compress_ae.py);
POST /v1/compress_ae/predict answers the bitstream and the reconstruction, POST
/v1/compress_ae/reconstruct the reconstruction as image/png.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torchmetrics
from PIL import Image
from torch import nn

from raycv.checkpoint import LoadedModel
from raycv.config import TrainConfig
from raycv.data.augment import random_dihedral, random_low_contrast
from raycv.data.figures import busiest_window, side_by_side, write_png, zoom
from raycv.data.images import decode_image, encode_png, to_model_input, to_uint8_images
from raycv.data.natural import CROP_SOURCE_DEFAULTS, crop_source, training_crop
from raycv.data.photos import held_out_photos, real_photos
from raycv.data.quality import ImageQuality, ms_ssim, psnr_ssim
from raycv.data.resample import stack_padded
from raycv.errors import RaycvError
from raycv.models.autoencoder import DOWNSAMPLE, AdversarialAutoencoder, QuantizedAutoencoder
from raycv.models.codec import STRIDE, FactorizedPriorCodec
from raycv.models.common import keep_grey
from raycv.tasks.base import Predict, Task
from raycv.tasks.cards import CARDS
from raycv.tasks.routes import answer_image, no_query, png_response

MODELS = {"ae": QuantizedAutoencoder, "aegan": AdversarialAutoencoder, "factorized": FactorizedPriorCodec}
# Inputs are padded to a multiple of the largest stride of the models, and a code holds the latent of the
# image so padded: the batch's reconstruction of an image alone is then exactly what its code decodes to.
PAD_MULTIPLE = max(DOWNSAMPLE, STRIDE)
LOSSES = {"l1": nn.functional.l1_loss, "mse": nn.functional.mse_loss}
TRAIN_OPTIONS = CARDS["compress_ae"].train_options
# The latent's height and width (its channels come with the model), and flags: GREY_FLAG, the image is grey and
# decodes to grey (models.common.keep_grey).
HEADER = struct.Struct(">HHB")
GREY_FLAG = 1
# A compressed file (`raycv compress_ae compress-image`): magic, the image's height and width, the code's length,
# a CRC-32 of the code and one of the model's symbol probabilities, then the code. The checks turn a
# truncated or damaged file, or one coded by another model, into an error instead of a wrong picture.
FILE_MAGIC = b"RCV2"
OLD_FILE_MAGICS = (b"RCV1",)  # codes without HEADER's flags
FILE_HEADER = struct.Struct(">4sHHIII")


def option(cfg: TrainConfig, name: str) -> Any:
    default = TRAIN_OPTIONS[name][0]
    return type(default)(cfg.extra.get(name, default))


# ---------------------------------------------------------------------------------------------------
# Entropy coding.
# ---------------------------------------------------------------------------------------------------


def encode_symbols(symbols: np.ndarray, probabilities: np.ndarray, grey: bool = False) -> bytes:
    """(C, h, w) integer symbols centred on 0 -> header + range-coded bitstream, each channel with its
    own categorical model (`probabilities`, (C, levels)); `grey` flags a grey image."""
    import constriction

    channels, height, width = symbols.shape
    half = (probabilities.shape[1] - 1) // 2
    indices = (symbols.astype(np.int64) + half).reshape(channels, -1)
    per_symbol = np.repeat(probabilities.astype(np.float32), height * width, axis=0)
    coder = constriction.stream.queue.RangeEncoder()
    coder.encode(indices.reshape(-1).astype(np.int32), constriction.stream.model.Categorical(perfect=False), per_symbol)
    return HEADER.pack(height, width, GREY_FLAG if grey else 0) + coder.get_compressed().tobytes()


def decode_symbols(data: bytes, probabilities: np.ndarray) -> tuple[np.ndarray, bool]:
    """The inverse of encode_symbols: the symbols, and whether the image is grey."""
    import constriction

    height, width, flags = HEADER.unpack_from(data)
    channels, levels = probabilities.shape
    words = np.frombuffer(data[HEADER.size:], dtype=np.uint32)
    per_symbol = np.repeat(probabilities.astype(np.float32), height * width, axis=0)
    decoder = constriction.stream.queue.RangeDecoder(words)
    indices = decoder.decode(constriction.stream.model.Categorical(perfect=False), per_symbol)
    return (indices.astype(np.int64) - (levels - 1) // 2).reshape(channels, height, width), bool(flags & GREY_FLAG)


def latent_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """The latent rows and columns a code of an image holds: those of the image padded to PAD_MULTIPLE."""
    return -(-height // PAD_MULTIPLE) * PAD_MULTIPLE // stride, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE // stride


# ---------------------------------------------------------------------------------------------------
# Held-out photographs: the model against JPEG at the same bits.
# ---------------------------------------------------------------------------------------------------


def pillow_coded(image: np.ndarray, codec: str, quality: int) -> tuple[np.ndarray, int]:
    """An image through Pillow's JPEG (4:2:0, optimised Huffman tables) or WebP (lossy, slowest method) at a
    quality: (decoded image, bytes)."""
    buffer = io.BytesIO()
    options = {"optimize": True} if codec == "JPEG" else {"method": 6}
    Image.fromarray(image).save(buffer, format=codec, quality=quality, **options)
    return decode_image(buffer.getvalue()), buffer.tell()


def jpeg_at_most(image: np.ndarray, bits: float) -> tuple[np.ndarray, float, int]:
    """The best JPEG (highest quality) whose file has at most `bits` bits; (decoded image, its bpp,
    quality). Quality 1 if even that is larger."""
    best = None
    for quality in range(1, 96):
        decoded, size = pillow_coded(image, "JPEG", quality)
        if best is not None and 8 * size > bits:
            break
        best = (decoded, size, quality)
    decoded, size, quality = best
    return decoded, 8 * size / (image.shape[0] * image.shape[1]), quality


def codec_label(loaded: LoadedModel) -> str:
    """A checkpoint's name in tables and plots: its model, and its lambda for the rate-distortion codec."""
    if loaded.config.model != "factorized":
        return loaded.config.model
    steps = option(loaded.config, "refine_steps")
    return f"factorized λ={option(loaded.config, 'rd_lambda'):g}" + (f" refined {steps}" if steps else "")


def quality_row(image: str, codec: str, bpp: float, result: np.ndarray, photo: np.ndarray) -> dict[str, Any]:
    psnr, ssim = psnr_ssim(result, photo, luma=False)
    return {"image": image, "codec": codec, "bpp": round(bpp, 3), "psnr": round(psnr, 2), "ssim": round(ssim, 4),
            "ms_ssim": round(ms_ssim(result, photo), 4)}


def with_means(rows: list[dict[str, Any]], group: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """`rows` and, per group of rows, one "mean" row of their bpp, PSNR, SSIM and MS-SSIM."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group(row), []).append(row)
    digits = {"bpp": 3, "psnr": 2, "ssim": 4, "ms_ssim": 4}
    return rows + [{"image": "mean", "codec": codec, **{key: round(float(np.mean([row[key] for row in mine])), places)
                                                        for key, places in digits.items()}}
                   for codec, mine in groups.items()]


def score_photos(models: list[LoadedModel], predict: Predict, names: tuple[str, ...] | None = None,
                 out: str | None = None) -> list[dict[str, Any]]:
    """Per photo and codec (each model, then JPEG at no more bits than the first): bpp, PSNR, SSIM and
    MS-SSIM on RGB of the whole photo, coded and decoded. With `out`, a side-by-side PNG per photo."""
    rows = []
    for name, photo in real_photos(names or held_out_photos(models[0].dataset_meta)).items():
        pictures = [("original", photo)]
        first_bits = None
        for loaded in models:
            answer = predict(loaded, [photo])[0]
            result = answer_image(answer)
            first_bits = first_bits or 8 * answer["bytes"]
            rows.append(quality_row(name, codec_label(loaded), answer["bpp"], result, photo))
            pictures.append((f"{codec_label(loaded)} {answer['bpp']:.2f} bpp {rows[-1]['psnr']:.1f} dB", result))
        jpeg, jpeg_bpp, quality = jpeg_at_most(photo, first_bits)
        rows.append(quality_row(name, f"jpeg q{quality}", jpeg_bpp, jpeg, photo))
        pictures.append((f"JPEG {jpeg_bpp:.2f} bpp {rows[-1]['psnr']:.1f} dB", jpeg))
        if out:
            top, left = busiest_window(photo, 128)
            box = (top, left, min(128, photo.shape[0]), min(128, photo.shape[1]))
            panels = side_by_side([(label, zoom(image, box, 2)) for label, image in pictures])
            write_png(out, f"{name}_compress.png", panels)
    return with_means(rows, lambda row: row["codec"].split(" q")[0])


PILLOW_QUALITIES = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


def rate_distortion(models: list[LoadedModel], predict: Predict, names: tuple[str, ...] | None = None
                    ) -> list[dict[str, Any]]:
    """Mean bpp, PSNR, SSIM and MS-SSIM over the held-out photographs of each model and of JPEG and WebP at
    each of PILLOW_QUALITIES (the "mean" rows; "image" rows per photo before them): the curves of
    rate_distortion_png."""
    rows = []
    for name, photo in real_photos(names or held_out_photos(models[0].dataset_meta)).items():
        pixels = photo.shape[0] * photo.shape[1]
        for loaded in models:
            answer = predict(loaded, [photo])[0]
            rows.append(quality_row(name, codec_label(loaded), answer["bpp"], answer_image(answer), photo))
        for codec in ("JPEG", "WebP"):
            for quality in PILLOW_QUALITIES:
                decoded, size = pillow_coded(photo, codec, quality)
                rows.append(quality_row(name, f"{codec.lower()} q{quality}", 8 * size / pixels, decoded, photo))
    return with_means(rows, lambda row: row["codec"])


def against_jpeg(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model of rate_distortion's rows: its mean bpp and PSNR, JPEG's mean PSNR at that bpp (its curve of
    means over PILLOW_QUALITIES, linear between neighbouring qualities) and the model's gain over it."""
    means = [row for row in rows if row["image"] == "mean"]
    jpeg = sorted((row["bpp"], row["psnr"]) for row in means if row["codec"].startswith("jpeg q"))
    table = []
    for row in means:
        if " q" not in row["codec"]:
            at_rate = float(np.interp(row["bpp"], *zip(*jpeg, strict=True)))
            table.append({"codec": row["codec"], "bpp": row["bpp"], "psnr": row["psnr"],
                          "jpeg_psnr_same_bpp": round(at_rate, 2), "gain_db": round(row["psnr"] - at_rate, 2)})
    return table


def rate_distortion_png(rows: list[dict[str, Any]]) -> bytes:
    """PSNR and MS-SSIM against bits per pixel: a line per Pillow codec, a point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [row for row in rows if row["image"] == "mean"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in ((axes[0], "psnr", "PSNR (dB, RGB)"), (axes[1], "ms_ssim", "MS-SSIM (RGB)")):
        for codec in ("jpeg", "webp"):
            curve = sorted((row["bpp"], row[key]) for row in means if row["codec"].startswith(codec + " q"))
            axis.plot(*zip(*curve, strict=True), marker=".", label=codec.upper())
        models = sorted((row["bpp"], row[key], row["codec"]) for row in means if " q" not in row["codec"])
        for index, (bpp, value, codec) in enumerate(models):  # colours after the two curves'
            axis.scatter([bpp], [value], s=90, marker="*", color=f"C{index + 2}", zorder=3, label=codec)
        axis.set(xlabel="bits per pixel", ylabel=label, xlim=(0, 1.2))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("compress_ae on photographs never trained on (mean over the photos)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------


def autoencoder_of(model: nn.Module) -> QuantizedAutoencoder:
    """The autoencoder inside a model (DDP-wrapped or not, AE or AE+GAN)."""
    model = getattr(model, "module", model)
    return getattr(model, "autoencoder", model)


class CompressAETask(Task):
    card = CARDS["compress_ae"]
    metric = "psnr"
    metric_mode = "max"
    companion_metrics = ("bpp",)
    synth_defaults = {"image_size": 64, **CROP_SOURCE_DEFAULTS}
    routes = {"reconstruct": (no_query("/v1/compress_ae/reconstruct"), png_response)}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        size = int(params["image_size"])
        if size < 4 * DOWNSAMPLE or size % DOWNSAMPLE:
            raise RaycvError(f"invalid image_size={size}: expected a multiple of {DOWNSAMPLE} >= {4 * DOWNSAMPLE}")
        return {"image_size": [size, size], **crop_source(params)}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        return {"image": encode_png(training_crop(rng, int(params["image_size"]), params))}

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"image": np.stack([decode_image(data) for data in batch["image"]])}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        if option(cfg, "loss") not in LOSSES:
            raise RaycvError(f"invalid loss={option(cfg, 'loss')!r}: expected one of {', '.join(LOSSES)}")
        if cfg.model == "factorized":
            side = meta["image_size"][0]
            if side % STRIDE:
                raise RaycvError(f"image_size {side} cannot train the factorized codec: it must be a multiple of "
                                 f"{STRIDE}, its stride (synthesize with --param image_size=64, 128, ...)")
            return FactorizedPriorCodec(cfg.width, option(cfg, "rd_lambda"), option(cfg, "refine_steps"))
        levels, channels = option(cfg, "levels"), option(cfg, "latent_channels")
        if levels < 3 or levels % 2 == 0 or levels > 255:
            raise RaycvError(f"invalid levels={levels}: expected an odd number in 3..255 (5 is -2..2)")
        if channels < 1:
            raise RaycvError(f"invalid latent_channels={channels}: expected an integer >= 1")
        return MODELS[cfg.model](cfg.width, channels, levels)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        images = random_dihedral(to_model_input(batch["image"]))[0]
        return {"image": random_low_contrast(images, option(cfg, "low_contrast_share"))}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        images = to_model_input(batch["image"])
        outputs = model(images)
        loss = LOSSES[option(cfg, "loss")](outputs["reconstruction"].float(), images)
        if "bits" in outputs:  # the factorized codec: rate and distortion, 255^2 as in Ballé et al. and CompressAI
            bits_per_pixel = outputs["bits"].sum() / (images.shape[0] * images.shape[-2] * images.shape[-1])
            return option(cfg, "rd_lambda") * 255 ** 2 * loss + bits_per_pixel
        if "discriminator" in outputs:  # AE+GAN: one backward trains both players (models/autoencoder.py)
            loss = (loss + option(cfg, "feature_matching_weight") * outputs["feature_matching"]
                    + option(cfg, "adversarial_weight") * outputs["adversarial"] + outputs["discriminator"])
        return loss

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        quality = ImageQuality(device, luma=False)
        bpp, mean_loss = torchmetrics.MeanMetric().to(device), torchmetrics.MeanMetric().to(device)
        latent_per_pixel = 0.0
        for batch in batches:
            images = to_model_input(batch["image"])
            outputs = model(images)
            reconstruction = outputs["reconstruction"].float()
            quality.update(reconstruction, images)
            mean_loss.update(nn.functional.l1_loss(reconstruction, images), weight=len(images))
            probabilities = outputs["probabilities"].float().cpu().numpy()
            pixel_count = images.shape[-1] * images.shape[-2]
            for symbols, grey in zip(outputs["symbols"].round().cpu().numpy(), outputs["grey"].tolist(), strict=True):
                bpp.update(8 * len(encode_symbols(symbols, probabilities, grey)) / pixel_count)
            latent_per_pixel = outputs["symbols"][0].numel() / pixel_count
        return {**quality.compute(), "bpp": float(bpp.compute()), "latent_per_pixel": latent_per_pixel,
                "loss": float(mean_loss.compute())}

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        return stack_padded(images, multiple=PAD_MULTIPLE)

    def postprocess(self, outputs: dict[str, torch.Tensor], meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image: the range-coded latent (base64 `code`, its `bytes` and `bpp` over the image's own
        pixels) and the decoder's reconstruction as a base64 PNG at the image's size. The code holds
        the latent of the image padded to PAD_MULTIPLE (latent_size); decoding it alone gives the
        reconstruction exactly when the image was not batched with larger ones."""
        images = to_uint8_images(outputs["reconstruction"].float())
        probabilities = outputs["probabilities"].float().cpu().numpy()
        stride = outputs["reconstruction"].shape[-1] // outputs["symbols"].shape[-1]
        answers = []
        for image, symbols, grey, (height, width) in zip(images, outputs["symbols"].round().cpu().numpy(),
                                                         outputs["grey"].tolist(), sizes, strict=False):
            rows, columns = latent_size(int(height), int(width), stride)
            code = encode_symbols(symbols[:, :rows, :columns], probabilities, grey)
            answers.append({"code": base64.b64encode(code).decode("ascii"), "bytes": len(code),
                            "bpp": 8 * len(code) / (int(height) * int(width)),
                            "latent_shape": [int(symbols.shape[0]), rows, columns],
                            "image_png": base64.b64encode(encode_png(np.ascontiguousarray(
                                image[:int(height), :int(width)]))).decode("ascii"),
                            "width": int(width), "height": int(height)})
        return answers


def model_fingerprint(model: nn.Module) -> int:
    """CRC-32 of the symbol probabilities the range coder uses: codes only decode with the same ones."""
    with torch.inference_mode():
        return zlib.crc32(autoencoder_of(model).probabilities().float().cpu().numpy().tobytes())


def pack_file(model: nn.Module, code: bytes, height: int, width: int) -> bytes:
    return FILE_HEADER.pack(FILE_MAGIC, height, width, len(code), zlib.crc32(code), model_fingerprint(model)) + code


def unpack_file(model: nn.Module, data: bytes, name: str) -> tuple[bytes, int, int]:
    """(code, height, width) of a compressed file, or a RaycvError naming the file and what is wrong."""
    if data[:len(FILE_MAGIC)] in OLD_FILE_MAGICS:
        raise RaycvError(f"{name}: written by an older raycv in a format this one no longer reads: compress the "
                         "image again with `raycv compress_ae compress-image`")
    if len(data) < FILE_HEADER.size or not data.startswith(FILE_MAGIC):
        raise RaycvError(f"{name}: not a compressed image (`raycv compress_ae compress-image` writes them)")
    _, height, width, length, checksum, fingerprint = FILE_HEADER.unpack_from(data)
    code = data[FILE_HEADER.size:]
    if len(code) != length:
        raise RaycvError(f"{name}: truncated: {len(code)} of its {length} code bytes"
                         if len(code) < length else f"{name}: {len(code) - length} bytes after the code")
    if zlib.crc32(code) != checksum:
        raise RaycvError(f"{name}: damaged: the code's checksum does not match")
    if fingerprint != model_fingerprint(model):
        raise RaycvError(f"{name}: coded by another model than this checkpoint (its symbol probabilities differ)")
    return code, height, width


def decompress(model: nn.Module, code: bytes, height: int, width: int) -> np.ndarray:
    """The image a `code` from postprocess decodes to (uint8 HWC at height x width)."""
    autoencoder = autoencoder_of(model)
    with torch.inference_mode():
        probabilities = autoencoder.probabilities().cpu().numpy()
        symbols, grey = decode_symbols(code, probabilities)
        device = next(autoencoder.parameters()).device
        reconstruction = keep_grey(autoencoder.decoder(torch.from_numpy(symbols).float()[None].to(device)),
                                   torch.tensor([grey], device=device))
    return to_uint8_images(reconstruction)[0, :height, :width]


TASK = CompressAETask()
