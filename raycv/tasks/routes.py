"""What the pixel tasks (superres, inpaint, compress_ae) share for their answers and Serve routes
(`Task.routes`): an answer that carries its image as a base64 PNG, and a route that takes no query
parameters."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np

from raycv.data.images import decode_image
from raycv.errors import RaycvError


def answer_png(answer: dict) -> bytes:
    """The PNG a pixel task's prediction carries (base64 in its JSON answer)."""
    return base64.b64decode(answer["image_png"])


def answer_image(answer: dict) -> np.ndarray:
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
