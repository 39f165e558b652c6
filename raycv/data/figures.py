"""Pictures people look at: labelled panels side by side, zoomed windows, sample grids."""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from raycv.data.images import encode_png


@functools.lru_cache(maxsize=32)
def caption_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships: unlike Pillow's default font it has Greek (a codec's λ). Cached:
    every caption of every figure asks for a size, and a shrinking one for several."""
    import matplotlib

    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)


def side_by_side(panels: list[tuple[str, np.ndarray]], gap: int = 4) -> np.ndarray:
    """uint8 HWC images of the same height in a row, each under its caption, on white. A caption wider
    than its panel is set smaller (down to 9 px) and then cut at the panel's edge: it never runs into
    the next caption."""
    height = max(image.shape[0] for _, image in panels)
    size = max(12, min(20, height // 12))
    caption = int(size * 1.6)
    width = sum(image.shape[1] for _, image in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + caption), (255, 255, 255))
    x = 0
    for label, image in panels:
        canvas.paste(Image.fromarray(image), (x, caption))
        strip = Image.new("RGB", (image.shape[1], caption), (255, 255, 255))
        draw = ImageDraw.Draw(strip)
        font = caption_font(size)
        while font.size > 9 and draw.textlength(label, font=font) > image.shape[1] - 8:
            font = caption_font(font.size - 1)
        draw.text((4, (caption - font.size) // 2), label, font=font, fill=(0, 0, 0))
        canvas.paste(strip, (x, 0))
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


def write_png(folder: str, file_name: str, image: np.ndarray) -> None:
    """`image` as the PNG folder/file_name, the folder made if needed."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, file_name), "wb") as file:
        file.write(encode_png(image))
