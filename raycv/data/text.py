"""Text pieces shared by the captcha and textrec tasks: alphabets and label encoding, seeded captcha
and street-number rendering with offline fonts, text-line resizing, and the SVHN-style JSON format.

SVHN-style JSON: a split folder ROOT/{train,val}/ holds images and one JSON file, a list of
{"filename": "1.png", "boxes": [{"left": x, "top": y, "width": w, "height": h, "label": "7"}, ...]},
one box per character in reading order. Labels are characters; integers are read as SVHN digits,
where 10 stands for "0".
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import string
import threading
from functools import lru_cache
from typing import Any
from collections.abc import Iterable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from raycv import storage
from raycv.data.formats import IMAGE_EXTENSIONS
from raycv.data.procedural import add_gaussian_noise, contrasting_color, random_background, to_uint8
from raycv.errors import RaycvError

DIGITS = string.digits
CAPTCHA_ALPHABET = string.digits + string.ascii_uppercase  # the book's 36 captcha characters
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts"))
PIL_DEFAULT_FONT = "<pil-default>"


# ---------------------------------------------------------------------------------------------------
# Labels.
# ---------------------------------------------------------------------------------------------------


def check_text(text: str, alphabet: str, where: str, max_length: int | None = None) -> str:
    """`text` if it is a non-empty string over `alphabet` (and not longer than `max_length`);
    otherwise a RaycvError naming the sample (`where`) and the bad value."""
    if not text:
        raise RaycvError(f"{where}: empty label; every sample needs at least one character")
    bad = sorted(set(text) - set(alphabet))
    if bad:
        raise RaycvError(f"{where}: label {text!r} has character(s) {''.join(bad)!r} outside the alphabet {alphabet!r}")
    if max_length is not None and len(text) > max_length:
        raise RaycvError(f"{where}: label {text!r} has {len(text)} characters, more than the {max_length} allowed")
    return text


def encode_texts(texts: Iterable[str], alphabet: str, max_length: int,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Texts to (N, max_length) int64 character indices (+ `offset`; CTC reserves 0 for its blank),
    padded with 0, and their (N,) lengths."""
    index = {char: position + offset for position, char in enumerate(alphabet)}
    texts = list(texts)
    labels = np.zeros((len(texts), max_length), dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        check_text(text, alphabet, f"sample {row}", max_length)
        labels[row, :len(text)] = [index[char] for char in text]
        lengths[row] = len(text)
    return labels, lengths


def text_answer(chars: Iterable[str], confidences: Iterable[float]) -> dict[str, Any]:
    """The JSON answer of every text task: the string and each character with its confidence."""
    characters = [{"char": char, "confidence": round(float(p), 4)} for char, p in zip(chars, confidences, strict=False)]
    return {"text": "".join(c["char"] for c in characters), "characters": characters}


# ---------------------------------------------------------------------------------------------------
# Fonts (offline only) and rendering.
# ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def offline_fonts() -> tuple[str, ...]:
    """The captcha package's DroidSansMono, every TrueType font installed on this machine, and PIL's
    built-in font: nothing is downloaded. Sorted, so a seed picks the same font on any worker that
    has the same fonts installed."""
    from captcha.image import DEFAULT_FONTS

    system = sorted({path for folder in SYSTEM_FONT_DIRS
                     for path in glob.glob(os.path.join(folder, "**", "*.tt[fc]"), recursive=True)})
    return (*DEFAULT_FONTS, *system, PIL_DEFAULT_FONT)


@lru_cache(maxsize=256)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    if path == PIL_DEFAULT_FONT:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)


class _SeededSecrets(random.Random):
    """Stands in for the `secrets` module (captcha >= 0.7) or `random` (older releases) inside
    captcha.image, so a captcha depends only on our seed instead of the operating system's entropy."""

    def randbelow(self, exclusive_upper_bound: int) -> int:
        return self._randbelow(exclusive_upper_bound)

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)


_CAPTCHA_LOCK = threading.Lock()  # the stand-in is module state; threads must not share it


@lru_cache(maxsize=16)
def _captcha_generator(width: int, height: int):
    from captcha.image import ImageCaptcha

    return ImageCaptcha(width=width, height=height)


def render_captcha(rng: np.random.Generator, text: str, width: int, height: int) -> np.ndarray:
    """A `captcha`-package image of `text` (uint8 HWC RGB), drawn only from `rng`."""
    import captcha.image as captcha_image

    seeded = _SeededSecrets(int(rng.integers(2**63)))
    with _CAPTCHA_LOCK:
        saved = {name: getattr(captcha_image, name) for name in ("secrets", "random") if hasattr(captcha_image, name)}
        try:
            for name in saved:
                setattr(captcha_image, name, seeded)
            image = _captcha_generator(width, height).generate_image(text)
        finally:
            for name, module in saved.items():
                setattr(captcha_image, name, module)
    return np.asarray(image.convert("RGB"))


def captcha_width(length: int, height: int) -> int:
    """Variable-length captchas grow with their text, about 2/3 of the height per character, so long
    strings are not squeezed into the fixed 160 pixels the package would otherwise shrink them to."""
    return max(height, int(round(length * height * 2 / 3)))


def svhn_box(left: float, top: float, width: float, height: float, label: str) -> dict[str, Any]:
    return {"left": round(float(left), 2), "top": round(float(top), 2), "width": round(float(width), 2),
            "height": round(float(height), 2), "label": label}


def render_street_number(rng: np.random.Generator, text: str, height: int = 48) -> tuple[np.ndarray, list[dict]]:
    """A house-number plate: `text` in a random offline font, size, spacing and colour on a procedural
    background, then a random perspective, blur and sensor noise. Returns the image (uint8 HWC RGB)
    and one SVHN-style box per character, in the image's pixels after the perspective."""
    fonts = offline_fonts()
    font = load_font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(int(height * 0.55), int(height * 0.8))))
    spacing = rng.uniform(-0.05, 0.35) * font.size
    glyph_boxes, x = [], 0.0
    for char in text:
        left, top, right, bottom = font.getbbox(char)
        glyph_boxes.append((x, char, (left, top, right, bottom)))
        x += right - left + spacing
    text_width = x - spacing
    text_top = min(b[1] for _, _, b in glyph_boxes)
    text_height = max(b[3] for _, _, b in glyph_boxes) - text_top
    margin_x, margin_y = rng.uniform(0.1, 0.5) * height, (height - text_height) / 2
    width = int(np.ceil(text_width + 2 * margin_x))
    origin_y = margin_y + rng.uniform(-0.25, 0.25) * margin_y

    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    corners = []
    for x, char, (left, top, right, bottom) in glyph_boxes:
        pen = (margin_x + x - left, origin_y - text_top)
        draw.text(pen, char, font=font, fill=255)
        corners.append([[pen[0] + left, pen[1] + top], [pen[0] + right, pen[1] + top],
                        [pen[0] + right, pen[1] + bottom], [pen[0] + left, pen[1] + bottom]])

    side = max(width, height)
    background, colors = random_background(rng, side)
    background = background[:height, :width]
    ink = contrasting_color(rng, colors, 0.45)
    image = (background + (np.asarray(mask, dtype=np.float64) / 255)[..., None] * (ink - background)).astype(np.float32)

    # Perspective: each image corner moves inward by up to 6 % of the width and 12 % of the height.
    source = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    jitter = rng.uniform(0, 1, (4, 2)) * np.float32([0.06 * width, 0.12 * height])
    target = (source + jitter * np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(source, target)
    image = cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    warped = cv2.perspectiveTransform(np.float32(corners).reshape(-1, 1, 2), matrix).reshape(len(text), 4, 2)
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = to_uint8(add_gaussian_noise(rng, image, rng.uniform(0.0, 0.04)))
    boxes = []
    for char, quad in zip(text, warped, strict=False):
        x1, y1 = np.clip(quad.min(axis=0), 0, [width, height])
        x2, y2 = np.clip(quad.max(axis=0), 0, [width, height])
        boxes.append(svhn_box(x1, y1, x2 - x1, y2 - y1, char))
    return image, boxes


def scaled_width(size: tuple[int, int], height: int, max_width: int) -> int:
    """The width of a (height, width) line once scaled to `height` keeping its aspect ratio, capped at `max_width`."""
    return max(1, min(max_width, int(round(size[1] * height / size[0]))))


def resize_to_height(image: np.ndarray, height: int, max_width: int) -> np.ndarray:
    """Scale a text line to `height` keeping its aspect ratio (capped at `max_width`)."""
    width = scaled_width(image.shape[:2], height, max_width)
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def pad_lines(lines: list[np.ndarray], width: int | None = None) -> np.ndarray:
    """Same-height text lines to one (N, H, W, 3) batch, right-padded to `width` (default: the widest)
    by repeating each line's last column, so the padding looks like more background, not a black bar."""
    width = width or max(line.shape[1] for line in lines)
    return np.stack([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), mode="edge") for line in lines])


# ---------------------------------------------------------------------------------------------------
# SVHN-style JSON plus image folders.
# ---------------------------------------------------------------------------------------------------


def _box_label(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value) % 10)  # SVHN's digitStruct: 10 is the digit 0
    return str(value)


def svhn_record(record: Any, image_size: tuple[int, int], alphabet: str, where: str) -> tuple[str, list[dict]]:
    """The text and boxes of one JSON entry, checked: every box inside the (height, width) image and
    every label a character of `alphabet`."""
    if not isinstance(record, dict) or not isinstance(record.get("boxes"), list):
        raise RaycvError(f"{where}: expected an object with a \"boxes\" list, found {str(record)[:80]!r}")
    height, width = image_size
    boxes = []
    for index, box in enumerate(record["boxes"]):
        try:
            left, top, box_width, box_height = (float(box[key]) for key in ("left", "top", "width", "height"))
            label = _box_label(box["label"])
        except (KeyError, TypeError, ValueError):
            raise RaycvError(f"{where}: box {index} {box!r} needs numeric left, top, width, height "
                             "and a label") from None
        if left < 0 or top < 0 or box_width <= 0 or box_height <= 0 or left + box_width > width + 0.5 \
                or top + box_height > height + 0.5:
            raise RaycvError(f"{where}: box {index} (left={left:g}, top={top:g}, width={box_width:g}, "
                             f"height={box_height:g}) lies outside the {width}x{height} image")
        boxes.append(svhn_box(left, top, box_width, box_height, label))
    text = "".join(box["label"] for box in boxes)
    check_text(text, alphabet, where)
    return text, boxes


def _split_json(folder: str) -> str:
    found = [name for name in storage.list_dir(folder) if name.endswith(".json")]
    if len(found) != 1:
        raise RaycvError(f"SVHN-style folder {folder} must hold exactly one JSON label file, found "
                         f"{len(found)}: {', '.join(found) or 'none'}")
    return storage.join(folder, found[0])


def read_svhn_split(folder: str, alphabet: str) -> list[dict[str, Any]]:
    """Rows {"image": bytes, "text", "boxes" (JSON), "filename"} of one split folder, every entry checked."""
    json_path = _split_json(folder)
    try:
        records = json.loads(storage.read_text(json_path))
    except json.JSONDecodeError as error:
        raise RaycvError(f"{json_path} is not valid JSON: {error}") from None
    if not isinstance(records, list) or not records:
        raise RaycvError(f"{json_path}: expected a non-empty JSON list of {{\"filename\", \"boxes\"}} entries")
    rows = []
    for index, record in enumerate(records):
        filename = record.get("filename") if isinstance(record, dict) else None
        where = f"{json_path} entry {index} ({filename})"
        if not isinstance(filename, str) or not filename.lower().endswith(IMAGE_EXTENSIONS):
            raise RaycvError(f"{where}: \"filename\" must name an image ({', '.join(IMAGE_EXTENSIONS)})")
        image_path = storage.join(folder, filename)
        if not storage.exists(image_path):
            raise RaycvError(f"{where}: image {image_path} not found")
        data = storage.read_bytes(image_path)
        try:
            with Image.open(io.BytesIO(data)) as image:  # the header is enough for the size
                size = (image.height, image.width)
        except (OSError, SyntaxError, ValueError) as error:
            raise RaycvError(f"{where}: cannot read image {image_path}: {error}") from None
        text, boxes = svhn_record(record, size, alphabet, where)
        rows.append({"image": data, "text": text, "boxes": json.dumps(boxes), "filename": image_path})
    return rows


def is_svhn_folder(path: str) -> bool:
    folder = storage.join(path, "train")
    return storage.is_dir(folder) and any(name.endswith(".json") for name in storage.list_dir(folder))


def read_svhn_folder(path: str, alphabet: str) -> dict[str, list[dict[str, Any]]]:
    """The stored rows of ROOT/train and ROOT/val (or test), SVHN-style split folders. Rows, not Ray
    Datasets, because the tasks check them as a whole (e.g. one length for captchas) first."""
    if not is_svhn_folder(path):
        raise RaycvError(f"{path} is neither a raycv dataset (no manifest.json) nor an SVHN-style folder "
                         f"(expected {path}/train/ and {path}/val/, each with images and one JSON label file)")
    val = "val" if storage.is_dir(storage.join(path, "val")) else "test"
    if not storage.is_dir(storage.join(path, val)):
        raise RaycvError(f"SVHN-style folder {path} has no val/ (or test/) split")
    return {split: read_svhn_split(storage.join(path, name), alphabet)
            for split, name in (("train", "train"), ("val", val))}


def write_svhn_split(folder: str, samples: Iterable[tuple[str, bytes, list[dict]]]) -> None:
    """Write (filename, image bytes, boxes) samples as an SVHN-style split folder (labels.json)."""
    os.makedirs(folder, exist_ok=True)
    records = []
    for filename, data, boxes in samples:
        with open(os.path.join(folder, filename), "wb") as file:
            file.write(data)
        records.append({"filename": filename, "boxes": boxes})
    with open(os.path.join(folder, "labels.json"), "w") as file:
        json.dump(records, file, indent=1)
