"""The held-out test photographs of the pixel tasks: the ones scikit-image and scikit-learn ship, which no
pixel task (superres, inpaint, compress_ae) trains on unless told to by name (inpaint's --param photos, whose
eval-photos then scores only the others). The photo-crops classification set
(data/photo_crops.py) is made of crops of them: a classifier trained there must never score the pixel tasks.

numpy, scikit-image and scikit-learn are imported by `real_photos` alone: the command line lists
PHOTO_NAMES in `--help` before anything heavy loads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from raycv.errors import RaycvError

if TYPE_CHECKING:
    import numpy as np

# Every photograph scikit-image ships (drawings, scans and synthetic images left out), and the two
# scikit-learn ships.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                  "immunohistochemistry", "moon", "retina", "rocket")
SKLEARN_PHOTOS = ("china", "flower")
PHOTO_NAMES = SKIMAGE_PHOTOS + SKLEARN_PHOTOS


def parse_photo_names(photos: str) -> tuple[str, ...]:
    """`photos=a,b,c` (a pixel task's synth parameter) as the bundled photographs it names; an unknown name is
    an error naming the valid ones."""
    names = tuple(name.strip() for name in photos.split(",") if name.strip())
    if not names or any(name not in PHOTO_NAMES for name in names):
        raise RaycvError(f"invalid photos={photos!r}: expected comma-separated names of {', '.join(PHOTO_NAMES)}")
    return names


def held_out_photos(dataset_meta: dict[str, Any]) -> tuple[str, ...]:
    """The bundled photographs a pixel task's dataset did not train on (raycv.data.natural.crop_source)."""
    trained_on = dataset_meta.get("training_photos", [])
    return tuple(name for name in PHOTO_NAMES if name not in trained_on)


def real_photos(names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """name -> uint8 (H, W, 3) RGB (grey photos repeated to three channels), in a fixed order."""
    import numpy as np
    import skimage.data
    from sklearn.datasets import load_sample_images

    wanted = names or PHOTO_NAMES
    unknown = [name for name in wanted if name not in PHOTO_NAMES]
    if unknown:
        raise RaycvError(f"unknown photo(s) {', '.join(unknown)}; valid: {', '.join(PHOTO_NAMES)}")
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
