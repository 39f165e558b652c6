"""What a user reads when an image cannot be decoded: no Python object reprs, and a size refusal that names
the limit that refused it. In-process, no Ray (the HTTP answers are in test_serve.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import header_only_png, png_bytes

from raycv.data.images import ImageTooLarge, decode_image
from raycv.errors import RaycvError
from raycv.inference import read_image_files

UNREADABLE = {
    "text": b"hello, not an image",
    "empty": b"",
    "truncated png": png_bytes(np.full((64, 64, 3), 200, np.uint8))[:60],
    "png signature only": b"\x89PNG\r\n\x1a\n garbage",
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_bytes_are_named_without_object_reprs(case):
    with pytest.raises(ValueError) as raised:
        decode_image(UNREADABLE[case])
    message = str(raised.value)
    assert message.startswith("not a readable image: ")
    assert "<" not in message and "object at 0x" not in message, message


def test_unknown_format_says_how_many_bytes_and_what_is_readable():
    with pytest.raises(ValueError, match=r"^not a readable image: cannot identify the format of 19 bytes "
                                         r"\(readable: PNG, JPEG, WebP, BMP, TIFF, GIF, \.\.\.\)$"):
        decode_image(UNREADABLE["text"])


def test_truncated_pixels_name_the_header_that_was_read():
    with pytest.raises(ValueError, match=r"^not a readable image: a 64x64 PNG header over truncated or corrupt data"):
        decode_image(UNREADABLE["truncated png"])


def test_too_many_pixels_are_refused_from_the_header():
    with pytest.raises(ImageTooLarge, match=r"^image of 6000x6000 pixels exceeds the limit of 1000000 pixels$"):
        decode_image(header_only_png(6000, 6000), max_pixels=1_000_000)


def test_a_pillow_bomb_refusal_names_the_callers_limit_when_it_is_lower(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # Pillow refuses above twice this, before max_pixels
    expected = r"^image of more than 10000 pixels exceeds the limit of 8000 pixels$"
    with pytest.raises(ImageTooLarge, match=expected) as raised:
        decode_image(header_only_png(200, 200), max_pixels=8000)
    assert raised.value.limit == 8000


def test_a_pillow_bomb_refusal_names_pillows_limit_when_it_is_the_lower(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    expected = (r"^image of more than 10000 pixels, which Pillow refuses as a possible decompression bomb "
                r"\(twice PIL\.Image\.MAX_IMAGE_PIXELS\)$")
    for max_pixels in (None, 50_000):
        with pytest.raises(ImageTooLarge, match=expected) as raised:
            decode_image(header_only_png(200, 200), max_pixels=max_pixels)
        assert raised.value.limit == 10000


def test_predict_files_get_the_same_messages(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(RaycvError) as raised:
        read_image_files([str(text)])
    message = str(raised.value)
    assert message.startswith(f"cannot read image {text}: not a readable image: cannot identify the format of 12 bytes")
    assert "object at 0x" not in message
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_only_png(20000, 20000))  # over Pillow's default limit of 2 x 89,478,485 pixels
    with pytest.raises(RaycvError, match=r"bomb\.png: image of more than 178956970 pixels, which Pillow refuses"):
        read_image_files([str(bomb)])


def test_a_caption_wider_than_its_panel_is_set_smaller_and_stays_over_its_own_panel():
    from raycv.data.figures import side_by_side

    panel = np.full((256, 256, 3), 128, np.uint8)
    label = "factorized λ=0.0025 0.12 bpp 35.08 dB"
    figure = side_by_side([(label, panel), ("", panel)], gap=4)
    caption = figure.shape[0] - 256
    assert figure.shape == (256 + caption, 516, 3)
    ink = figure[:caption].min(axis=2) < 128
    assert not ink[:, 256:].any()  # the caption ends before the next panel,
    assert ink[:, 200:252].any()  # it was set smaller to fit, not cut: its end is drawn near the edge
    alone = side_by_side([(label, np.full((64, 64, 3), 128, np.uint8)), ("", panel)], gap=4)
    assert not (alone[:alone.shape[0] - 256, 64:].min(axis=2) < 128).any()  # too long even at 9 px: cut
