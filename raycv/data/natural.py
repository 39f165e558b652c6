"""The images the pixel tasks (superres, inpaint, compress_ae, dcgan) train on: crops with the
statistics of natural images, made offline or cut from a folder of photos.

`dead_leaves` is the procedural source. The dead-leaves model (opaque shapes of power-law sizes
falling on top of each other) has the statistics that make natural images natural: a 1/f spectrum,
sharp occluding edges of every orientation and contrast, flat and textured regions at every scale.
Restoration networks trained on it alone come close to ones trained on photos (Achddou et al.,
"Synthetic images as a regularity prior for image restoration neural networks", 2021), so raycv can
train offline and still be measured on real photos it never saw (raycv/data/photos.py). `photo_crop`
takes crops of any image folder instead.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

from raycv.data import procedural
from raycv.data.formats import image_files
from raycv.errors import RaycvError


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


@functools.lru_cache(maxsize=4)
def image_folder_files(folder: str) -> tuple[str, ...]:
    """The images of --param images_dir, listed once per process (each synthesized row picks one)."""
    return tuple(image_files(folder, "images_dir"))


def photo_crop(rng: np.random.Generator, folder: str, size: int) -> np.ndarray:
    """A random (size, size, 3) uint8 crop of a random image of `folder`: a square of 1 to 2 times
    `size` (as the photo allows) shrunk to `size` with an antialiased resize, so crops differ in
    scale as well as place. Photos smaller than `size` are enlarged first."""
    files = image_folder_files(folder)
    with Image.open(files[rng.integers(len(files))]) as photo:
        return random_crop(rng, photo.convert("RGB"), size)


def random_crop(rng: np.random.Generator, photo: Image.Image, size: int) -> np.ndarray:
    """A square of 1 to 2 times `size` (as the RGB photo allows) at a random place, shrunk to `size`."""
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


# A pixel task's synth parameters naming where its training crops come from (crop_source, training_crop).
CROP_SOURCE_DEFAULTS = {"images_dir": "", "photos": "", "dead_leaves_share": 0.0}


def crop_source(params: dict[str, Any]) -> dict[str, Any]:
    """The dataset meta of a crop source, checked in the driver before any Ray task: `source` (words) and
    `training_photos` (the bundled photographs trained on: eval-photos scores the others)."""
    from raycv.data.photos import parse_photo_names

    images_dir, photos, share = params["images_dir"], params["photos"], float(params["dead_leaves_share"])
    if images_dir and photos:
        raise RaycvError("give images_dir or photos, not both: the crops come from one source")
    if not 0 <= share <= 1:
        raise RaycvError(f"invalid dead_leaves_share={share}: expected a share of the crops in [0, 1], e.g. 0.5")
    check_images_dir(images_dir)
    names = parse_photo_names(photos) if photos else ()
    source = images_dir or (f"photos {','.join(names)}" if names else "dead leaves")
    if share and (images_dir or names):
        source += f", {share:.0%} dead leaves"
    return {"source": source, "training_photos": list(names)}


def training_crop(rng: np.random.Generator, size: int, params: dict[str, Any]) -> np.ndarray:
    """The crop a pixel task trains on: a crop of a folder's image when `images_dir` is given, of one of the
    bundled photographs named in `photos` (comma-separated, raycv.data.photos) when that is, else dead leaves;
    with a folder or photos, dead leaves instead for a `dead_leaves_share` of the crops."""
    images_dir, photos = params.get("images_dir", ""), params.get("photos", "")
    if (images_dir or photos) and rng.random() < float(params.get("dead_leaves_share", 0.0)):
        return dead_leaves(rng, size)
    if images_dir:
        return photo_crop(rng, images_dir, size)
    if photos:
        from raycv.data.photos import parse_photo_names

        named = parse_photo_names(photos)
        return random_crop(rng, Image.fromarray(bundled_photos(named)[named[rng.integers(len(named))]]), size)
    return dead_leaves(rng, size)


@functools.lru_cache(maxsize=4)
def bundled_photos(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named photographs, loaded once per process (a synthesis task crops many rows from them)."""
    from raycv.data.photos import real_photos

    return real_photos(names)


def check_images_dir(images_dir: str) -> None:
    """Fail in the driver, before any Ray task, on a folder that is missing or holds no images."""
    if images_dir:
        image_folder_files(images_dir)
