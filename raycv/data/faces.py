"""Procedural identities: cartoon faces whose identity is a set of traits, photographed many ways.

The textbook's chapter 7 searches PubFig face crops. raycv needs an offline stand-in with the same
structure: many identities, each recognisable across photos, and photos that differ in ways that do
not change who is shown. So a face is split in two:

- `FaceTraits`, drawn once per identity from a generator seeded by (dataset seed, identity number):
  head shape, skin, hair colour and style, eye spacing, size and colour, brows, nose, mouth, ears,
  facial hair, glasses, a mole. Two identities differ in many of these at once, as people do.
- per photo nuisances, drawn from the sample's own generator: background texture, pose (position,
  scale, roll, yaw), expression (smile, eye openness, brow raise), clothing, lighting and colour
  cast, blur, sensor noise, and an occluder (sunglasses, a hat, a scarf or an object at the side).

Features are polygons in a face frame (x right, y down, head half-height 1) mapped to pixels by the
photo's pose, rasterised with the anti-aliased primitives of `procedural` and painted back to front.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from raycv.data import procedural

# Skin tones from light to dark; an identity's skin lies between two neighbours, tinted a little.
SKIN_TONES = np.array([[0.98, 0.87, 0.78], [0.90, 0.72, 0.58], [0.76, 0.56, 0.40], [0.55, 0.38, 0.26],
                       [0.36, 0.24, 0.16]])
HAIR_COLORS = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.09], [0.55, 0.35, 0.17], [0.85, 0.70, 0.40],
                        [0.65, 0.25, 0.10], [0.70, 0.70, 0.70], [0.95, 0.95, 0.92]])
IRIS_COLORS = np.array([[0.30, 0.18, 0.08], [0.15, 0.35, 0.70], [0.20, 0.50, 0.25], [0.45, 0.45, 0.50],
                        [0.05, 0.05, 0.05]])
HAIR_STYLES = ("bald", "short", "fringe", "long", "side_part")
FACIAL_HAIR = ("none", "moustache", "beard")


@dataclass(frozen=True)
class FaceTraits:
    """Who a face is: everything that stays the same across an identity's photos."""

    head_width: float  # half-width of the head / half-height
    jaw: float  # width of the lower face relative to the upper
    skin: np.ndarray
    hair_color: np.ndarray
    hair_style: str
    hairline: float  # y of the hairline at the centre
    hair_tilt: float  # slope of the hairline (a side sweep)
    ear_size: float
    eye_y: float
    eye_spacing: float  # half the distance between the eyes
    eye_size: float
    eye_aspect: float
    iris: np.ndarray
    brow_gap: float
    brow_thickness: float
    brow_tilt: float
    brow_length: float
    nose_length: float
    nose_width: float
    mouth_y: float
    mouth_width: float
    mouth_curve: float
    lip_color: np.ndarray
    lip_thickness: float
    facial_hair: str
    glasses: np.ndarray | None  # frame colour, or None
    glasses_round: bool
    mole: tuple[float, float] | None


def draw_traits(rng: np.random.Generator) -> FaceTraits:
    """A new identity. Every trait is drawn from `rng` in a fixed order, so an identity is a seed."""
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(tone)
    skin = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[min(low + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[low])
    skin = np.clip(skin + rng.uniform(-0.05, 0.05, 3), 0, 1)
    # Mostly natural hair colours, sometimes dyed (any colour).
    hair = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] if rng.random() < 0.8 else rng.random(3)
    hair = np.clip(hair + rng.uniform(-0.06, 0.06, 3), 0, 1)
    glasses = rng.random(3) * 0.8 if rng.random() < 0.3 else None
    return FaceTraits(
        head_width=rng.uniform(0.66, 0.92), jaw=rng.uniform(0.68, 1.0), skin=skin, hair_color=hair,
        hair_style=HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.08, 0.3, 0.22, 0.22, 0.18])],
        hairline=rng.uniform(-0.8, -0.3), hair_tilt=rng.uniform(-0.35, 0.35), ear_size=rng.uniform(0.12, 0.22),
        eye_y=rng.uniform(-0.22, 0.05), eye_spacing=rng.uniform(0.26, 0.44), eye_size=rng.uniform(0.09, 0.15),
        eye_aspect=rng.uniform(0.45, 0.85), iris=np.clip(IRIS_COLORS[rng.integers(len(IRIS_COLORS))]
                                                         + rng.uniform(-0.08, 0.08, 3), 0, 1),
        brow_gap=rng.uniform(0.12, 0.24), brow_thickness=rng.uniform(0.03, 0.09), brow_tilt=rng.uniform(-0.35, 0.35),
        brow_length=rng.uniform(0.14, 0.3), nose_length=rng.uniform(0.16, 0.34), nose_width=rng.uniform(0.07, 0.18),
        mouth_y=rng.uniform(0.4, 0.62), mouth_width=rng.uniform(0.18, 0.4), mouth_curve=rng.uniform(-0.08, 0.1),
        lip_color=np.clip(skin * rng.uniform(0.55, 0.85) + np.array([rng.uniform(0.05, 0.3), 0, 0]), 0, 1),
        lip_thickness=rng.uniform(0.03, 0.08),
        facial_hair=FACIAL_HAIR[rng.choice(len(FACIAL_HAIR), p=[0.6, 0.15, 0.25])],
        glasses=glasses, glasses_round=bool(rng.random() < 0.5),
        mole=(rng.uniform(-0.5, 0.5), rng.uniform(-0.1, 0.6)) if rng.random() < 0.35 else None,
    )


@lru_cache(maxsize=8192)  # a synthesis batch draws each identity's photos from the same traits
def identity_traits(seed: int, identity: int) -> FaceTraits:
    """The traits of identity number `identity` of a dataset synthesized with `seed`."""
    return draw_traits(np.random.default_rng([seed, 0x1D, identity]))


# ---------------------------------------------------------------------------------------------------
# Outlines in the face frame.
# ---------------------------------------------------------------------------------------------------


def ellipse(cx: float, cy: float, rx: float, ry: float, count: int = 32, angle: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def head_outline(traits: FaceTraits, count: int = 48) -> np.ndarray:
    """An egg: the lower half narrows by `jaw` towards the chin."""
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    y = np.sin(t)
    narrowing = np.where(y > 0, 1 - (1 - traits.jaw) * y, 1.0)
    return np.stack([traits.head_width * np.cos(t) * narrowing, y], axis=1)


def band(x0: float, x1: float, y_of_x, thickness: float, count: int = 12) -> np.ndarray:
    """A curved stroke from x0 to x1 along y_of_x, `thickness` thick (brows, lips, frames)."""
    x = np.linspace(x0, x1, count)
    y = y_of_x(x)
    return np.concatenate([np.stack([x, y - thickness / 2], 1), np.stack([x[::-1], y[::-1] + thickness / 2], 1)])


def hair_cap(traits: FaceTraits, jitter: float) -> np.ndarray:
    """Hair over the top of the head down to the hairline (sloped by hair_tilt), slightly fuller
    than the head."""
    width = traits.head_width * 1.08
    t = np.linspace(np.pi, 2 * np.pi, 24)
    top = np.stack([width * np.cos(t), 1.1 * np.sin(t) - 0.02], axis=1)
    x = np.linspace(width, -width, 12)
    line = traits.hairline + jitter + traits.hair_tilt * x
    if traits.hair_style == "fringe":
        line = line + 0.25 + 0.08 * np.cos(x * 9)
    elif traits.hair_style == "side_part":
        line = line + 0.2 * np.clip(x / width, 0, 1)
    # Down the temples to eye height at the sides.
    sides = np.array([[-width, min(0.0, traits.eye_y)], [width, min(0.0, traits.eye_y)]])
    return np.concatenate([top, sides[1:], np.stack([x, line], 1), sides[:1]])


@dataclass(frozen=True)
class Pose:
    center: np.ndarray  # pixels
    scale: float  # pixels per face unit
    roll: float  # radians
    yaw: float  # -1..1: features shift towards the turned side, the head narrows

    def to_pixels(self, points: np.ndarray, depth: float = 1.0) -> np.ndarray:
        """Face-frame points to pixel (x, y). `depth` is how far forward a feature sits (nose 1.2,
        ears 0.2): yaw moves near features more than far ones, a cheap perspective."""
        x = points[:, 0] * (1 - 0.25 * abs(self.yaw)) + self.yaw * 0.3 * depth
        y = points[:, 1]
        c, s = np.cos(self.roll), np.sin(self.roll)
        return self.center + self.scale * np.stack([c * x - s * y, s * x + c * y], axis=1)


def paint(image: np.ndarray, pose: Pose, polygons: list[tuple[np.ndarray, bool]], color: np.ndarray,
          depth: float = 1.0) -> np.ndarray:
    placed = [(pose.to_pixels(points, depth), additive) for points, additive in polygons]
    return procedural.composite(image, procedural.rasterize_polygons_into(placed, image.shape[0]), color)


def render_face(rng: np.random.Generator, traits: FaceTraits, size: int = 32) -> np.ndarray:
    """One photo of the identity `traits`: (size, size, 3) uint8, all nuisances drawn from `rng`."""
    image, _ = procedural.random_background(rng, size)
    pose = Pose(center=np.array([size / 2, size * 0.47]) + rng.uniform(-0.06, 0.06, 2) * size,
                scale=size * rng.uniform(0.3, 0.38), roll=rng.uniform(-0.3, 0.3), yaw=rng.uniform(-0.45, 0.45))
    smile = traits.mouth_curve + rng.uniform(-0.05, 0.07)
    openness = rng.uniform(0.45, 1.1)
    brow_raise = rng.uniform(-0.03, 0.05)
    hair_jitter = rng.uniform(-0.04, 0.04)
    shade = traits.skin * 0.8

    # Clothing and neck (shirt colour changes from photo to photo).
    shirt = procedural.random_color(rng)
    shoulders = np.array([[-1.6, 2.6], [-1.3, 1.35], [-0.3, 1.15], [0.3, 1.15], [1.3, 1.35], [1.6, 2.6]])
    image = paint(image, pose, [(shoulders, True)], shirt, depth=0.0)
    if traits.hair_style == "long":
        back = np.array([[-1.0, -0.6], [1.0, -0.6], [1.05, 1.3], [-1.05, 1.3]]) * [traits.head_width * 1.25, 1]
        image = paint(image, pose, [(back, True)], traits.hair_color * 0.85, depth=0.0)
    neck = np.array([[-0.3, 0.6], [0.3, 0.6], [0.32, 1.25], [-0.32, 1.25]])
    image = paint(image, pose, [(neck, True)], shade, depth=0.1)

    for side in (-1, 1):  # ears, at eye height
        ear = ellipse(side * traits.head_width * 0.98, traits.eye_y + 0.12, traits.ear_size * 0.6, traits.ear_size)
        image = paint(image, pose, [(ear, True)], shade, depth=0.2)
    image = paint(image, pose, [(head_outline(traits), True)], traits.skin, depth=0.6)
    if traits.facial_hair == "beard":
        outline = head_outline(traits)
        lower = outline[outline[:, 1] > traits.mouth_y - 0.15]
        beard = np.concatenate([lower, [[traits.mouth_width * 0.9, traits.mouth_y - 0.12],
                                        [-traits.mouth_width * 0.9, traits.mouth_y - 0.12]]])
        mouth_hole = ellipse(0, traits.mouth_y + 0.02, traits.mouth_width * 0.75, 0.12)
        image = paint(image, pose, [(beard, True), (mouth_hole, False)], traits.hair_color, depth=0.8)
    if traits.hair_style != "bald":
        image = paint(image, pose, [(hair_cap(traits, hair_jitter), True)], traits.hair_color, depth=0.5)

    for side in (-1, 1):
        eye_x = side * traits.eye_spacing
        brow_y = traits.eye_y - traits.brow_gap - brow_raise
        brow = band(eye_x - traits.brow_length / 2, eye_x + traits.brow_length / 2,
                    lambda x, ex=eye_x, by=brow_y, s=side: by + s * traits.brow_tilt * (x - ex), traits.brow_thickness)
        image = paint(image, pose, [(brow, True)], traits.hair_color * 0.8, depth=1.0)
        height = traits.eye_size * traits.eye_aspect * openness
        image = paint(image, pose, [(ellipse(eye_x, traits.eye_y, traits.eye_size, height), True)],
                      np.array([0.95, 0.95, 0.93]), depth=1.0)
        iris_radius = min(traits.eye_size * 0.55, max(height, 0.02))
        image = paint(image, pose, [(ellipse(eye_x, traits.eye_y, iris_radius, iris_radius, 16), True)],
                      traits.iris, depth=1.0)
        image = paint(image, pose, [(ellipse(eye_x, traits.eye_y, iris_radius * 0.45, iris_radius * 0.45, 12), True)],
                      np.zeros(3), depth=1.0)

    nose_top = traits.eye_y + 0.08
    nose = np.array([[0, nose_top], [traits.nose_width, nose_top + traits.nose_length],
                     [-traits.nose_width, nose_top + traits.nose_length]])
    image = paint(image, pose, [(nose, True)], traits.skin * 0.72, depth=1.2)
    mouth = band(-traits.mouth_width, traits.mouth_width,
                 lambda x: traits.mouth_y - smile * (x / traits.mouth_width) ** 2,  # smile > 0: corners up
                 traits.lip_thickness)
    image = paint(image, pose, [(mouth, True)], traits.lip_color, depth=1.0)
    if traits.facial_hair == "moustache":
        moustache = band(-traits.mouth_width * 0.9, traits.mouth_width * 0.9,
                         lambda x: traits.mouth_y - 0.09 + 0.15 * (x / traits.mouth_width) ** 2, 0.07)
        image = paint(image, pose, [(moustache, True)], traits.hair_color, depth=1.1)
    if traits.mole is not None:
        image = paint(image, pose, [(ellipse(*traits.mole, 0.045, 0.045, 12), True)], traits.skin * 0.35, depth=0.8)
    if traits.glasses is not None:
        rim = traits.eye_size * 1.6
        for side in (-1, 1):
            eye_x = side * traits.eye_spacing
            count = 24 if traits.glasses_round else 4
            angle = 0.0 if traits.glasses_round else np.pi / 4
            outer = ellipse(eye_x, traits.eye_y, rim, rim * 0.85, count, angle)
            inner = ellipse(eye_x, traits.eye_y, rim * 0.82, rim * 0.85 * 0.78, count, angle)
            image = paint(image, pose, [(outer, True), (inner, False)], traits.glasses, depth=1.1)
        bridge = band(-traits.eye_spacing + rim * 0.8, traits.eye_spacing - rim * 0.8,
                      lambda x: np.full_like(x, traits.eye_y - 0.02), 0.04, count=2)
        image = paint(image, pose, [(bridge, True)], traits.glasses, depth=1.1)

    image = occlude(rng, image, pose, traits)
    # Lighting from one side, a colour cast and exposure, then the camera's blur and noise.
    light = procedural.linear_gradient(rng, size)
    image = image * (1 + rng.uniform(0.0, 0.5) * (light[..., None] - 0.5))
    image = image * rng.uniform(0.85, 1.15, 3)
    image = procedural.adjust_contrast(image, rng.uniform(0.75, 1.2))
    if rng.random() < 0.25:
        image = blur(image, rng.uniform(1.3, 2.2))
    image = procedural.add_gaussian_noise(rng, image, rng.uniform(0.0, 0.05))
    return procedural.to_uint8(image)


def occlude(rng: np.random.Generator, image: np.ndarray, pose: Pose, traits: FaceTraits) -> np.ndarray:
    """With probability 0.35, one thing in front of the face: sunglasses, a hat, a scarf, or an
    object coming in from one side."""
    if rng.random() >= 0.35:
        return image
    kind = rng.integers(4)
    color = procedural.random_color(rng)
    if kind == 0:
        width = traits.eye_spacing + traits.eye_size * 1.8
        shades = band(-width, width, lambda x: np.full_like(x, traits.eye_y), traits.eye_size * 2.6, count=2)
        return paint(image, pose, [(shades, True)], color * 0.3, depth=1.1)
    if kind == 1:
        brim = traits.hairline - rng.uniform(0.0, 0.2)
        hat = np.array([[-1.2, brim], [1.2, brim], [0.8, brim - 0.3], [0.7, -1.5], [-0.7, -1.5], [-0.8, brim - 0.3]])
        return paint(image, pose, [(hat, True)], color, depth=0.6)
    if kind == 2:
        top = traits.mouth_y + rng.uniform(-0.1, 0.15)
        scarf = np.array([[-1.2, top], [1.2, top], [1.4, 1.6], [-1.4, 1.6]])
        return paint(image, pose, [(scarf, True)], color, depth=0.9)
    side = rng.choice([-1, 1])
    reach = rng.uniform(0.35, 0.75)
    y0, y1 = sorted(rng.uniform(-0.8, 1.0, 2))
    y1 = max(y1, y0 + 0.5)
    thing = np.array([[side * 2.5, y0], [side * (1 - reach), y0], [side * (1 - reach), y1], [side * 2.5, y1]])
    return paint(image, pose, [(thing, True)], color, depth=1.2)


def blur(image: np.ndarray, factor: float) -> np.ndarray:
    """Out of focus, the way a low-resolution camera is: down by `factor` and back up, bilinear."""
    from PIL import Image

    size = image.shape[0]
    small = max(4, int(round(size / factor)))
    pixels = Image.fromarray(procedural.to_uint8(image))
    return np.asarray(pixels.resize((small, small), Image.BILINEAR).resize((size, size), Image.BILINEAR)) / 255.0
