"""Pieces shared by the pixel-to-pixel tasks (superres, inpaint, compress_ae, dcgan): where training
crops come from, how they are degraded, how results are measured and how they are shown.

- Crops: `dead_leaves` is the procedural source. The dead-leaves model (opaque shapes of power-law
  sizes falling on top of each other) has the statistics that make natural images natural: a 1/f
  spectrum, sharp occluding edges of every orientation and contrast, flat and textured regions at
  every scale. Restoration networks trained on it alone come close to ones trained on photos
  (Achddou et al., "Synthetic images as a regularity prior for image restoration neural networks",
  2021), so raycv can train offline and still be measured on real photos it never saw. `photo_crop`
  takes crops of any image folder instead.
- Degradation: `bicubic_downscale` / `bicubic_upscale` are PIL's antialiased bicubic (Keys a = -0.5,
  as MATLAB's imresize), the standard way super-resolution pairs and baselines are made.
- Measurement: PSNR and SSIM on the luma (Y) channel of ITU-R BT.601 studio-range YCbCr (what the
  super-resolution literature reports), computed by torchmetrics on images quantised to 8 bits, with
  `shave` border pixels left out; `masked_psnr` measures only the pixels of a mask (an inpainted hole).
- `real_photos`: the photographs scikit-image and scikit-learn ship, the held-out test set no
  training run ever sees.
- `side_by_side`: labelled panels in one PNG-ready image.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from raycv.data import procedural
from raycv.errors import RaycvError

SCALES = (2, 3, 4)

# ---------------------------------------------------------------------------------------------------
# Crops.
# ---------------------------------------------------------------------------------------------------


def power_law_radius(rng: np.random.Generator, low: float, high: float, exponent: float = 3.0) -> float:
    """A radius with density ~ r^-exponent on [low, high]: the dead-leaves law that makes the image
    look alike at every scale (exponent 3 in 2-D)."""
    a, b = low ** (1 - exponent), high ** (1 - exponent)
    return float((a + rng.random() * (b - a)) ** (1 / (1 - exponent)))


def fractal_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Value noise summed over octaves with 1/f amplitudes, in [0, 1]: grass, bark, gravel, fur."""
    field = np.zeros((size, size))
    cells, amplitude = int(rng.integers(2, 5)), 1.0
    while cells <= size // 2:
        field += amplitude * procedural.value_noise(rng, size, cells)
        cells, amplitude = cells * 2, amplitude * rng.uniform(0.45, 0.75)
    low, high = field.min(), field.max()
    return (field - low) / max(high - low, 1e-6)


def leaf_fill(rng: np.random.Generator, side: int) -> np.ndarray:
    """The colour of one leaf over a (side, side) window: flat most often, else a gentle gradient, a
    fractal texture or stripes, each between two nearby colours."""
    color = procedural.random_color(rng)
    color = color.mean() + rng.uniform(0.2, 1.0) * (color - color.mean())  # photos are rarely saturated
    kind = rng.random()
    if kind < 0.55 or side < 4:
        return np.broadcast_to(color, (side, side, 3))
    other = procedural.nearby_color(rng, color, rng.uniform(0.05, 0.4))
    if kind < 0.75:
        field = procedural.linear_gradient(rng, side)
    elif kind < 0.92:
        field = fractal_noise(rng, side)
    else:
        field = procedural.stripes(rng, side)
    return procedural.colorize(field, color, other)


def leaf_alpha(rng: np.random.Generator, side: int, center: np.ndarray, radius: float) -> np.ndarray:
    """Coverage of one leaf in a (side, side) window: a disc, a random polygon (straight edges and
    corners) or a stroke."""
    kind = rng.random()
    if kind < 0.45:
        return procedural.disc_alpha(side, center, radius)
    if kind < 0.9:
        sides = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, sides))
        radii = radius * rng.uniform(0.5, 1.0, sides)
        points = center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return procedural.rasterize_polygons_into([(points, True)], side)
    angle = rng.uniform(0, 2 * np.pi)
    offset = radius * np.array([np.cos(angle), np.sin(angle)])
    return procedural.segment_alpha(side, center - offset, center + offset, rng.uniform(0.7, 3.0))


MAX_LEAVES = 2000
# Below the scale-invariant 3, larger leaves are likelier: calmer images, with the flat and smooth
# regions photos have, and far fewer leaves to draw.
LEAF_SIZE_EXPONENT = 2.6
# Smaller leaves would cost most of the drawing time; the textured fills and strokes bring the finest
# detail instead.
MIN_LEAF_RADIUS = 4.0


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 dead-leaves image; deterministic for a generator state.

    Leaves are laid front to back, each only where those before it left the canvas uncovered, until
    less than 5 % shows through; a procedural texture fills what is left. Each leaf is drawn in
    its own window, so the many small ones cost little. A mild blur stands for depth of field (some
    images), light noise for the sensor."""
    image = np.zeros((size, size, 3))
    cover = np.zeros((size, size))
    for index in range(MAX_LEAVES):
        radius = power_law_radius(rng, MIN_LEAF_RADIUS, size, exponent=LEAF_SIZE_EXPONENT)
        center = rng.uniform(-radius / 2, size + radius / 2, 2)
        # The leaf's window, clipped to the canvas: only its pixels are drawn and coloured.
        x0, y0 = np.maximum(np.floor(center - radius - 2).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(center + radius + 2).astype(int), size)
        if x0 >= x1 or y0 >= y1:
            continue
        side = int(max(x1 - x0, y1 - y0))
        alpha = leaf_alpha(rng, side, center - (x0, y0), radius)[:y1 - y0, :x1 - x0]
        alpha = alpha * (1 - cover[y0:y1, x0:x1])
        image[y0:y1, x0:x1] += alpha[..., None] * leaf_fill(rng, side)[:y1 - y0, :x1 - x0]
        cover[y0:y1, x0:x1] += alpha
        if index % 32 == 31 and (cover < 0.5).mean() < 0.05:
            break
    background, _ = procedural.random_background(rng, size)
    image += (1 - cover)[..., None] * background
    image = procedural.adjust_contrast(image, rng.uniform(0.7, 1.2))
    if rng.random() < 0.3:
        from scipy.ndimage import gaussian_filter

        image = gaussian_filter(image, sigma=(*[rng.uniform(0.2, 0.8)] * 2, 0))
    image = procedural.add_gaussian_noise(rng, image, rng.uniform(0.0, 0.01))
    return procedural.to_uint8(image)


def image_folder_files(folder: str) -> tuple[str, ...]:
    from raycv.data.scenes import background_files  # the same cached listing scenes use

    return background_files(folder)


def photo_crop(rng: np.random.Generator, folder: str, size: int) -> np.ndarray:
    """A random (size, size, 3) uint8 crop of a random image of `folder`: a square of 1 to 2 times
    `size` (as the photo allows) shrunk to `size` with an antialiased resize, so crops differ in
    scale as well as place. Photos smaller than `size` are enlarged first."""
    files = image_folder_files(folder)
    with Image.open(files[rng.integers(len(files))]) as photo:
        photo = photo.convert("RGB")
        if min(photo.size) < size:
            factor = size / min(photo.size)
            photo = photo.resize((max(size, round(photo.width * factor)), max(size, round(photo.height * factor))),
                                 Image.BICUBIC)
        side = int(min(min(photo.size), size * rng.uniform(1.0, 2.0)))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        if side != size:
            crop = crop.resize((size, size), Image.BICUBIC, reducing_gap=None)
    return np.asarray(crop)


def training_crop(rng: np.random.Generator, size: int, images_dir: str = "") -> np.ndarray:
    """The crop a pixel task trains on: a photo crop when `images_dir` is given, else dead leaves."""
    return photo_crop(rng, images_dir, size) if images_dir else dead_leaves(rng, size)


def check_images_dir(images_dir: str) -> None:
    """Fail in the driver, before any Ray task, on a folder that is missing or holds no images."""
    if images_dir:
        image_folder_files(images_dir)


# ---------------------------------------------------------------------------------------------------
# Degradation and sizes.
# ---------------------------------------------------------------------------------------------------


def check_scale(scale: int) -> int:
    if int(scale) != scale or int(scale) not in SCALES:
        raise RaycvError(f"invalid scale={scale!r}: expected one of {', '.join(map(str, SCALES))}")
    return int(scale)


def bicubic_downscale(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, C) uint8 shrunk by `scale` with antialiased bicubic; H and W must be multiples of it
    (`crop_to_multiple` first), or the low-resolution pixels would not tile the high-resolution ones."""
    height, width = image.shape[:2]
    if height % scale or width % scale:
        raise RaycvError(f"a {height}x{width} image cannot be downscaled x{scale}: both sides must be multiples "
                         f"of {scale} (crop it to {height - height % scale}x{width - width % scale})")
    return np.asarray(Image.fromarray(image).resize((width // scale, height // scale), Image.BICUBIC))


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every super-resolution number is compared with."""
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * scale, height * scale), Image.BICUBIC))


def crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """The top-left part of `image` whose sides are multiples of `multiple` (the SR literature's
    "modcrop"): at most multiple - 1 rows and columns are dropped."""
    height, width = image.shape[:2]
    return image[:height - height % multiple, :width - width % multiple]


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """NCHW padded at the bottom and right to sides that are multiples of `multiple`; crop the
    output back with [..., :height, :width]."""
    height, width = images.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if not (pad_bottom or pad_right):
        return images
    return torch.nn.functional.pad(images, (0, pad_right, 0, pad_bottom), mode=mode)


def stack_padded(images: list[np.ndarray], margin: int = 0, multiple: int = 1) -> torch.Tensor:
    """Images of different sizes as one float NCHW batch in [0, 1]: each replicate-padded by `margin`
    on every side and then at the bottom and right to the batch's largest size, rounded up to
    `multiple`. With a margin at least a network's receptive field, an image's answer does not
    depend on the images it is batched with."""
    height = max(image.shape[0] for image in images) + 2 * margin
    width = max(image.shape[1] for image in images) + 2 * margin
    height, width = height + -height % multiple, width + -width % multiple
    batch = []
    for image in images:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div_(255)  # a writable copy
        top_left = torch.nn.functional.pad(pixels, (margin, margin, margin, margin), mode="replicate")
        rest = (0, width - top_left.shape[-1], 0, height - top_left.shape[-2])
        batch.append(torch.nn.functional.pad(top_left, rest, mode="replicate"))
    return torch.cat(batch)


def random_dihedral(*images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random flips and transpose (one of 8 orientations) per sample for NCHW batches of
    square images that belong together (a low- and high-resolution pair, an image and its mask):
    edges of every orientation, eight times the data for free."""
    flips = (lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.transpose(-1, -2))
    for flip in flips:
        chosen = (torch.rand(images[0].shape[0], device=images[0].device) < 0.5).view(-1, 1, 1, 1)
        images = tuple(torch.where(chosen, flip(image), image) for image in images)
    return images


def as_batch(image: np.ndarray) -> torch.Tensor:
    """One uint8 HWC image as a float (1, C, H, W) batch in [0, 1] (a copy: inputs may be read-only)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Float NCHW in [0, 1] (clamped) to uint8 NHWC."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Colour: BT.601 studio-range YCbCr, the convention of SR papers and of MATLAB's rgb2ycbcr.
# ---------------------------------------------------------------------------------------------------

_RGB_TO_YCBCR = torch.tensor([[65.481, 128.553, 24.966],
                              [-37.797, -74.203, 112.0],
                              [112.0, -93.786, -18.214]], dtype=torch.float64) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255


def rgb_to_ycbcr(images: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] to YCbCr in [0, 1] (Y in [16, 235] / 255)."""
    matrix = _RGB_TO_YCBCR.to(images)
    return torch.einsum("ij,njhw->nihw", matrix, images) + _YCBCR_OFFSET.to(images).view(1, 3, 1, 1)


def ycbcr_to_rgb(images: torch.Tensor) -> torch.Tensor:
    matrix = torch.linalg.inv(_RGB_TO_YCBCR).to(images)
    return torch.einsum("ij,njhw->nihw", matrix, images - _YCBCR_OFFSET.to(images).view(1, 3, 1, 1))


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] to N1HW luma."""
    return rgb_to_ycbcr(images)[:, :1]


# ---------------------------------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------------------------------


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG of the result would hold: scores are of images people can save."""
    return images.float().clamp(0, 1).mul(255).round().div(255)


def shave(images: torch.Tensor, border: int) -> torch.Tensor:
    return images[..., border:images.shape[-2] - border, border:images.shape[-1] - border] if border else images


class ImageQuality:
    """Mean per-image PSNR (dB) and SSIM of results against references, border shaved, on Y
    (`luma`, super-resolution's convention) or on RGB (compression's). torchmetrics' states sum
    across DDP workers, so each worker may measure only its shard."""

    def __init__(self, device: torch.device | str, border: int = 0, luma: bool = True):
        import torchmetrics

        self.border, self.luma = border, luma
        self.psnr = torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)).to(device)
        self.ssim = torchmetrics.image.StructuralSimilarityIndexMeasure(data_range=1.0).to(device)

    def update(self, results: torch.Tensor, references: torch.Tensor) -> None:
        """NCHW RGB in [0, 1], of the same size."""
        channels = rgb_to_y if self.luma else (lambda images: images)
        results = shave(channels(quantize(results)), self.border)
        references = shave(channels(quantize(references)), self.border)
        self.psnr.update(results, references)
        self.ssim.update(results, references)

    def compute(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}


def psnr_ssim(result: np.ndarray, reference: np.ndarray, border: int = 0, luma: bool = True) -> tuple[float, float]:
    """PSNR and SSIM (on Y, or on RGB) of one uint8 HWC result against its reference."""
    quality = ImageQuality("cpu", border, luma)
    quality.update(as_batch(result), as_batch(reference))
    scores = quality.compute()
    return scores["psnr"], scores["ssim"]


def masked_psnr(results: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) over the pixels where `masks` (N1HW, 1 = measured) is set, all channels,
    after 8-bit quantisation. An exact match is capped at 100 dB rather than infinity."""
    error = (quantize(results) - quantize(references)).pow(2) * masks
    count = masks.sum(dim=(1, 2, 3)) * results.shape[1]
    mse = error.sum(dim=(1, 2, 3)) / count.clamp(min=1)
    return (10 * torch.log10(1 / mse.clamp(min=1e-10))).clamp(max=100.0)


# ---------------------------------------------------------------------------------------------------
# The held-out photographs.
# ---------------------------------------------------------------------------------------------------

# Every photograph scikit-image ships (drawings, scans and synthetic images left out), and the two
# scikit-learn ships. None is ever used for training.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                  "immunohistochemistry", "moon", "retina", "rocket")
SKLEARN_PHOTOS = ("china", "flower")


def real_photos(names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """name -> uint8 (H, W, 3) RGB (grey photos repeated to three channels), in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    wanted = names or SKIMAGE_PHOTOS + SKLEARN_PHOTOS
    unknown = [name for name in wanted if name not in SKIMAGE_PHOTOS + SKLEARN_PHOTOS]
    if unknown:
        raise RaycvError(f"unknown photo(s) {', '.join(unknown)}; valid: {', '.join(SKIMAGE_PHOTOS + SKLEARN_PHOTOS)}")
    photos = {}
    sklearn_images = None
    for name in wanted:
        if name in SKLEARN_PHOTOS:
            if sklearn_images is None:
                samples = load_sample_images()
                sklearn_images = {os.path.splitext(os.path.basename(path))[0]: image
                                  for path, image in zip(samples.filenames, samples.images, strict=False)}
            image = sklearn_images[name]
        else:
            image = getattr(skimage.data, name)()
        photos[name] = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2
                                            else image[..., :3])
    return photos


def answer_png(answer: dict) -> bytes:
    """The PNG a pixel task's prediction carries (base64 in its JSON answer)."""
    import base64

    return base64.b64decode(answer["image_png"])


def answer_image(answer: dict) -> np.ndarray:
    from raycv.data.images import decode_image

    return decode_image(answer_png(answer))


def png_response(image: np.ndarray, answer: dict) -> bytes:
    """A Serve route's `respond` that answers with the prediction's PNG itself."""
    return answer_png(answer)


def no_query(route: str, hint: str = "") -> Callable[[dict], dict]:
    """A Serve route's `parse_query` for a route that takes no query parameters."""
    def parse(query: dict[str, list[str]]) -> dict:
        if query:
            raise RaycvError(f"{route} takes no query parameters (got {', '.join(sorted(query))}){hint}")
        return {}

    return parse


def add_photo_arguments(parser, checkpoint_help: str, repeat_checkpoint: bool = False) -> None:
    """The flags of every `eval-photos` verb: the checkpoint(s), a subset of the photos, an output folder."""
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help,
                        action="append" if repeat_checkpoint else "store")
    parser.add_argument("--photos", default="", help="comma-separated subset of "
                        f"{', '.join(SKIMAGE_PHOTOS + SKLEARN_PHOTOS)} (default: all)")
    parser.add_argument("--out", default="", help="folder for side-by-side PNGs and photos.json (default: none)")


def photo_names(photos: str) -> tuple[str, ...] | None:
    """`--photos` as real_photos takes it (None: all)."""
    return tuple(name.strip() for name in photos.split(",") if name.strip()) or None


def report_photos(rows: list[dict], title: str, out: str) -> int:
    """Print an `eval-photos` table and, with `out`, save it as photos.json beside the PNGs."""
    import json

    from raycv.report import table

    print(table(rows, title))
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "photos.json"), "w") as file:
            json.dump(rows, file, indent=2)
        print(f"side-by-side PNGs and photos.json: {out}")
    return 0


# ---------------------------------------------------------------------------------------------------
# Pictures.
# ---------------------------------------------------------------------------------------------------


def side_by_side(panels: list[tuple[str, np.ndarray]], gap: int = 4) -> np.ndarray:
    """uint8 HWC images of the same height in a row, each under its caption, on white."""
    height = max(image.shape[0] for _, image in panels)
    font = ImageFont.load_default(max(12, min(20, height // 12)))  # Pillow's own scalable font
    caption = int(font.size * 1.6)
    width = sum(image.shape[1] for _, image in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, image in panels:
        canvas.paste(Image.fromarray(image), (x, caption))
        draw.text((x + 4, (caption - font.size) // 2), label, font=font, fill=(0, 0, 0))
        x += image.shape[1] + gap
    return np.asarray(canvas)


def zoom(image: np.ndarray, box: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """The (top, left, height, width) window of `image`, enlarged `factor` times with nearest
    neighbours so that pixels stay visible as pixels."""
    top, left, height, width = box
    window = image[top:top + height, left:left + width]
    return np.repeat(np.repeat(window, factor, axis=0), factor, axis=1)


def busiest_window(image: np.ndarray, window: int) -> tuple[int, int]:
    """Top-left of the `window` square with the most edges: where super-resolution shows."""
    luma = image.astype(np.float64).mean(axis=2)
    edges = np.abs(np.diff(luma, axis=0))[:, :-1] + np.abs(np.diff(luma, axis=1))[:-1]
    best, best_score = (0, 0), -1.0
    step = max(8, window // 4)
    for top in range(0, max(1, edges.shape[0] - window + 1), step):
        for left in range(0, max(1, edges.shape[1] - window + 1), step):
            score = float(edges[top:top + window, left:left + window].sum())
            if score > best_score:
                best, best_score = (top, left), score
    return best


def grid(images: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """(N, H, W, 3) uint8 tiles in rows of `columns`, on white."""
    count, height, width = images.shape[:3]
    rows = -(-count // columns)
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        canvas[row * (height + gap):row * (height + gap) + height,
               column * (width + gap):column * (width + gap) + width] = image
    return canvas
