"""Offline procedural stand-in for CIFAR-10: ten filled shapes on varied backgrounds, 32x32 RGB.

Tests, the demo and the benchmarks need a 10-class image set that is generated in-process (no
download), byte-identical for a given seed, and hard in the right way: a linear model on raw pixels
should do poorly while a small CNN learns it within a few epochs. That rules out flat shapes on flat
backgrounds, so every image draws a random background texture, foreground colour, position, scale,
rotation and aspect, a few distractor strokes and blobs, a contrast change and sensor noise. The class
is carried by the silhouette alone.

The primitives (scalar fields, colourisation, polygon rasterisation, strokes, clutter, noise) are
public so that other synthesizers, such as detection scenes, can compose them. Images are built as
float arrays in [0, 1] and quantised to uint8 once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from raycv.errors import RaycvError

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "heart",
    "arrow",
    "crescent",
)

# A polygon outline in some coordinate frame, and whether it adds to the mask (True) or cuts a hole.
Polygon = tuple[np.ndarray, bool]

# Polygons are drawn at this many times the output resolution and box-filtered down: PIL's polygon fill
# is aliased, and 4x4 subsamples give 17 coverage levels, enough for smooth edges at 32x32.
SUPERSAMPLE = 4

# Minimum RGB distance between the foreground colour and both background colours, so the silhouette is
# always visible to a human; without it a few percent of images are unlabelable noise.
MIN_FOREGROUND_CONTRAST = 0.4

_LUMA = np.array([0.299, 0.587, 0.114])


# ---------------------------------------------------------------------------------------------------
# Shape outlines. Each class is one or more polygons in a unit frame: centred on the origin with all
# vertices inside the unit circle and at least one on it, so "radius" means the same for every class.
# ---------------------------------------------------------------------------------------------------


def circle_points(count: int, radius: float = 1.0, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    return np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], axis=1)


def star_points(points: int, inner_ratio: float) -> np.ndarray:
    outline = circle_points(2 * points)
    outline[1::2] *= inner_ratio
    return outline


def _heart_points(count: int) -> np.ndarray:
    # The classic parametric heart; y is negated because image rows grow downwards.
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], axis=1)


def normalise_outline(polygons: list[Polygon]) -> tuple[Polygon, ...]:
    """Centre the additive polygons' bounding box on the origin and scale them into the unit circle."""
    solid = np.concatenate([points for points, additive in polygons if additive])
    center = (solid.min(axis=0) + solid.max(axis=0)) / 2.0
    radius = np.linalg.norm(solid - center, axis=1).max()
    return tuple(((points - center) / radius, additive) for points, additive in polygons)


_ARM = 0.3  # half-width of the cross's arms, relative to their length
_SHAPE_OUTLINES: tuple[tuple[Polygon, ...], ...] = tuple(
    normalise_outline(polygons)
    for polygons in (
        [(circle_points(48), True)],
        [(circle_points(4), True)],
        [(circle_points(3), True)],
        [(star_points(5, 0.42), True)],
        [
            (
                np.array(
                    [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
                     (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)],
                    dtype=float,
                ),
                True,
            )
        ],
        [(circle_points(48), True), (circle_points(40, 0.55), False)],
        [(circle_points(6), True)],
        [(_heart_points(48), True)],
        [
            (
                np.array([(-1, -0.2), (0.05, -0.2), (0.05, -0.6), (1, 0), (0.05, 0.6), (0.05, 0.2), (-1, 0.2)]),
                True,
            )
        ],
        [(circle_points(48), True), (circle_points(40, 0.8, (0.45, 0.0)), False)],
    )
)
assert len(_SHAPE_OUTLINES) == len(SHAPE_CLASSES)


def shape_polygons(
    label: int, center: tuple[float, float], radius: float, angle: float, aspect: float = 1.0
) -> list[Polygon]:
    """The outline of class `label` placed in pixel coordinates (x, y); see `place_outline`."""
    return place_outline(_SHAPE_OUTLINES[label], center, radius, angle, aspect)


def place_outline(outline: Sequence[Polygon], center: tuple[float, float] | np.ndarray, radius: float,
                  angle: float, aspect: float = 1.0) -> list[Polygon]:
    """A unit-frame outline placed in pixel coordinates (x, y): scaled to `radius`, stretched by `aspect`
    along its own x axis, then rotated by `angle` radians about `center`."""
    cos, sin = np.cos(angle), np.sin(angle)
    transform = radius * np.array([[aspect * cos, aspect * sin], [-sin, cos]])
    return [(points @ transform + center, additive) for points, additive in outline]


def rasterize_polygons(polygons: Sequence[Polygon], size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage mask (size, size) in [0, 1] of polygons given in pixel coordinates, where
    pixel (i, j) spans [j, j + 1) x [i, i + 1). Polygons are drawn in order, holes erasing what came
    before, so list the outer outline first."""
    canvas = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(canvas)
    for points, additive in polygons:
        # PIL puts sample points at integer coordinates; shifting by half a subpixel moves them to the
        # subpixel centres, keeping masks aligned with the pixel-centre grid used by the numpy primitives.
        draw.polygon((points * supersample - 0.5).ravel().tolist(), fill=255 if additive else 0)
    return np.asarray(canvas.reduce(supersample), dtype=np.float64) * (1.0 / 255.0)


def rasterize_polygons_into(polygons: Sequence[Polygon], size: int) -> np.ndarray:
    """`rasterize_polygons` on a (size, size) canvas, drawing only the polygons' bounding window: the
    same coverage for a small object on a large image at a fraction of the cost."""
    points = np.concatenate([points for points, _ in polygons])
    x0, y0 = np.clip(np.floor(points.min(axis=0)).astype(int) - 1, 0, size)
    x1, y1 = np.clip(np.ceil(points.max(axis=0)).astype(int) + 1, 0, size)
    alpha = np.zeros((size, size))
    side = max(x1 - x0, y1 - y0)
    if side > 0:
        window = rasterize_polygons([(p - (x0, y0), additive) for p, additive in polygons], side)
        alpha[y0:y1, x0:x1] = window[:y1 - y0, :x1 - x0]
    return alpha


# ---------------------------------------------------------------------------------------------------
# Scalar fields in [0, 1], the raw material of backgrounds and shading.
# ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size). Cached and read-only: every primitive needs
    them and rebuilding them per image would dominate the cost of small images."""
    centers = np.arange(size, dtype=np.float64) + 0.5
    x, y = np.meshgrid(centers, centers)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@lru_cache(maxsize=32)
def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) weights that smoothstep-interpolate a lattice of cells + 1 values to size pixels;
    value noise is then two small matrix products instead of a per-pixel gather."""
    position = (np.arange(size) + 0.5) * (cells / size)
    left = np.minimum(position.astype(int), cells - 1)
    fraction = position - left
    fraction = fraction * fraction * (3.0 - 2.0 * fraction)
    weights = np.zeros((size, cells + 1))
    weights[np.arange(size), left] = 1.0 - fraction
    weights[np.arange(size), left + 1] = fraction
    weights.flags.writeable = False
    return weights


def _direction(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coordinate along a random direction through the image centre, in pixels."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    x, y = pixel_grid(size)
    return (x - size / 2) * np.cos(angle) + (y - size / 2) * np.sin(angle)


def linear_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """Ramp from 0 to 1 across the image along a random direction."""
    return np.clip(_direction(rng, size) / (size * np.sqrt(2.0)) + 0.5, 0.0, 1.0)


def value_noise(rng: np.random.Generator, size: int, cells: int | None = None) -> np.ndarray:
    """Smooth blotches: random values on a coarse lattice, smoothly interpolated and stretched to [0, 1]."""
    if cells is None:
        cells = int(rng.integers(2, 7))
    weights = _interpolation_matrix(size, cells)
    field = weights @ rng.random((cells + 1, cells + 1)) @ weights.T
    low, high = field.min(), field.max()
    return (field - low) / max(high - low, 1e-6)


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Parallel bands of random period, angle, phase and edge sharpness."""
    period = rng.uniform(3.0, 10.0)
    wave = np.sin(_direction(rng, size) * (2.0 * np.pi / period) + rng.uniform(0.0, 2.0 * np.pi))
    return np.clip(0.5 + rng.uniform(0.5, 3.0) * wave, 0.0, 1.0)


def checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rotated checkerboard with soft edges (hard edges would alias at this resolution)."""
    angle = rng.uniform(0.0, np.pi / 2)
    frequency = 2.0 * np.pi / rng.uniform(6.0, 14.0)  # one period is two squares
    x, y = pixel_grid(size)
    u = (x * np.cos(angle) + y * np.sin(angle)) * frequency
    v = (y * np.cos(angle) - x * np.sin(angle)) * frequency
    return np.clip(0.5 + rng.uniform(1.0, 4.0) * np.sin(u) * np.sin(v), 0.0, 1.0)


BACKGROUND_FIELDS: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    linear_gradient,
    value_noise,
    stripes,
    checkerboard,
)


# ---------------------------------------------------------------------------------------------------
# Colour and compositing.
# ---------------------------------------------------------------------------------------------------


def colorize(field: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(H, W) field in [0, 1] to an (H, W, 3) image blending colour `low` (at 0) into `high` (at 1)."""
    return low + field[..., None] * (high - low)


def composite(image: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Paint `color` (an RGB triple or an image of the same size) over `image` with coverage `alpha`."""
    return image + alpha[..., None] * (color - image)


def random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3)


def nearby_color(rng: np.random.Generator, color: np.ndarray, spread: float) -> np.ndarray:
    """A colour within `spread` of `color` per channel: the second colour of a texture or shading whose
    contrast should stay bounded."""
    return np.clip(color + rng.uniform(-spread, spread, 3), 0.0, 1.0)


def contrasting_color(rng: np.random.Generator, avoid: Sequence[np.ndarray], min_distance: float) -> np.ndarray:
    """A random colour at least `min_distance` (RGB, Euclidean) from every colour in `avoid`. Rejection
    sampling terminates quickly: for two colours to avoid and distances up to ~0.5 most of the cube
    remains."""
    while True:
        color = random_color(rng)
        if all(np.linalg.norm(color - other) >= min_distance for other in avoid):
            return color


def random_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A textured background and the two colours it blends, which foreground colours should avoid."""
    field = BACKGROUND_FIELDS[rng.integers(len(BACKGROUND_FIELDS))](rng, size)
    low = random_color(rng)
    high = nearby_color(rng, low, rng.uniform(0.1, 0.6))
    return colorize(field, low, high), (low, high)


# ---------------------------------------------------------------------------------------------------
# Strokes, blobs and clutter, rasterised analytically on the pixel grid (cheaper than a PIL round trip
# for thin features, and anti-aliased by a one-pixel coverage ramp).
# ---------------------------------------------------------------------------------------------------


def covering_window(size: int, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of a (size, size) image holding every pixel whose centre lies in the box
    [low, high] (pixel (x, y)), with a pixel to spare."""
    x0, y0 = np.clip(np.floor(low - 0.5).astype(int), 0, size)
    x1, y1 = np.clip(np.ceil(high + 0.5).astype(int), 0, size)
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def segment_alpha(size: int, start: np.ndarray, end: np.ndarray, width: float,
                  window: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Coverage of a round-capped line segment from `start` to `end` (pixel (x, y)) of the given width,
    over the pixels of `window` (default: the whole image)."""
    x, y = (grid[window] for grid in pixel_grid(size))
    dx, dy = x - start[0], y - start[1]
    ex, ey = end[0] - start[0], end[1] - start[1]
    t = np.clip((dx * ex + dy * ey) / max(ex * ex + ey * ey, 1e-9), 0.0, 1.0)
    distance = np.hypot(dx - t * ex, dy - t * ey)
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def disc_alpha(size: int, center: np.ndarray, radius: float,
               window: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Coverage of a filled disc, over the pixels of `window` (default: the whole image)."""
    x, y = (grid[window] for grid in pixel_grid(size))
    return np.clip(radius + 0.5 - np.hypot(x - center[0], y - center[1]), 0.0, 1.0)


def random_clutter(rng: np.random.Generator, size: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """One distractor, a short thin stroke or a small blob, both far smaller than any class shape so
    they cannot be mistaken for one. Returns (window, alpha over the window, colour): the coverage is zero
    outside the window, so painting it there alone spares full-image temporaries (on 300-px scenes each
    stroke was computed and composited over all 90,000 pixels for a few hundred it touches)."""
    if rng.random() < 0.6:
        start = rng.uniform(0.0, size, 2)
        length = rng.uniform(0.15, 0.45) * size
        angle = rng.uniform(0.0, 2.0 * np.pi)
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        width = rng.uniform(0.6, 1.4)
        reach = width / 2 + 0.5  # coverage is zero farther than this from the segment
        window = covering_window(size, np.minimum(start, end) - reach, np.maximum(start, end) + reach)
        alpha = segment_alpha(size, start, end, width, window)
    else:
        center, radius = rng.uniform(0.0, size, 2), rng.uniform(0.6, 0.07 * size)
        window = covering_window(size, center - radius - 0.5, center + radius + 0.5)
        alpha = disc_alpha(size, center, radius, window)
    return window, alpha, random_color(rng)


def add_gaussian_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    return image + rng.normal(0.0, sigma, image.shape)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale deviations from the mean intensity, as a camera's exposure and gamma would."""
    mean = image.mean()
    return mean + (image - mean) * factor


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# The classification image.
# ---------------------------------------------------------------------------------------------------


BACKGROUNDS = ("textured", "plain")
LAYOUTS = ("anywhere", "centred")
CENTRED_RADIUS = 0.35  # of the side: the middle of the random layout's 0.2-0.425
# A class for images with no shape in them (amorphous blobs), so that a classifier can say "none of the
# shapes" instead of naming the nearest one with confidence: what judging a generator's samples needs.
NO_SHAPE = "none"
NO_SHAPE_LABEL = len(SHAPE_CLASSES)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """--param NAME=VALUE (background, layout) checked against its choices, as a one-line error naming the value."""
    if value not in choices:
        raise RaycvError(f"invalid {name}={value!r}: expected {' or '.join(choices)}")
    return value


def shapeless_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coverage of one to three amorphous blobs with soft edges: value noise under a Gaussian envelope,
    thresholded (the envelope keeps each blob in one place; the noise keeps its outline irregular)."""
    x, y = pixel_grid(size)
    alpha = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        center, radius = rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0.12, 0.35) * size
        envelope = np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2) / (2 * radius ** 2))
        field = envelope * (0.4 + 0.6 * value_noise(rng, size, int(rng.integers(3, 8))))
        alpha = np.maximum(alpha, np.clip((field - rng.uniform(0.25, 0.5)) / rng.uniform(0.02, 0.3), 0.0, 1.0))
    return alpha


def render_shape_image(rng: np.random.Generator, label: int, size: int = 32,
                       background: str = "textured", layout: str = "anywhere") -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label` (an index into SHAPE_CLASSES, or NO_SHAPE_LABEL for
    amorphous blobs instead of a shape). Deterministic: the same generator state gives byte-identical
    output. `background="plain"` draws the shape alone on one flat colour (no texture, clutter, contrast
    change or noise): the set a small generator can learn. `layout="centred"` puts every shape in the middle
    at one size (rotation and colours still vary): aligned data, as generators are usually shown."""
    if not 0 <= label <= NO_SHAPE_LABEL:
        raise ValueError(f"label {label} is outside 0..{NO_SHAPE_LABEL}")
    plain = check_choice("background", background, BACKGROUNDS) == "plain"
    if plain:
        color = random_color(rng)
        image, background_colors = np.broadcast_to(color, (size, size, 3)).astype(np.float32), (color, color)
    else:
        image, background_colors = random_background(rng, size)
    if label == NO_SHAPE_LABEL:
        image = composite(image, shapeless_alpha(rng, size),
                          contrasting_color(rng, background_colors, MIN_FOREGROUND_CONTRAST))
        return to_uint8(image if plain else add_gaussian_noise(rng, image, rng.uniform(0.0, 0.05)))

    # Distractors are drawn under the shape or, less often, across it, so the network must learn to
    # ignore thin occluders rather than just the background.
    over = []
    for _ in range(0 if plain else rng.integers(0, 5)):
        window, alpha, color = random_clutter(rng, size)
        if rng.random() < 0.3:
            over.append((window, alpha, color))
        else:
            image[window] = composite(image[window], alpha, color)

    # Scale is the diameter of the shape's bounding circle as a fraction of the image; the centre may let
    # up to a tenth of that radius fall outside the frame.
    if check_choice("layout", layout, LAYOUTS) == "centred":
        polygons = shape_polygons(label, np.array([size / 2, size / 2]), CENTRED_RADIUS * size,
                                  rng.uniform(0.0, 2.0 * np.pi), 1.0)
    else:
        radius = rng.uniform(0.2, 0.425) * size
        center = rng.uniform(0.9 * radius, size - 0.9 * radius, 2)
        polygons = shape_polygons(label, center, radius, rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.9, 1.1))
    foreground = contrasting_color(rng, background_colors, MIN_FOREGROUND_CONTRAST)
    # Gentle shading across the shape so it is not a flat colour a linear model could key on.
    shading = colorize(linear_gradient(rng, size), foreground, nearby_color(rng, foreground, 0.15))
    image = composite(image, rasterize_polygons(polygons, size), shading)

    for window, alpha, color in over:
        image[window] = composite(image[window], alpha, color)
    if plain:
        return to_uint8(image)
    image = adjust_contrast(image, rng.uniform(0.7, 1.2))
    image = add_gaussian_noise(rng, image, rng.uniform(0.0, 0.05))
    return to_uint8(image)
