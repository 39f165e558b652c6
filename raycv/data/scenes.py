"""Composited scenes for detection and segmentation: objects pasted onto backgrounds, with exact masks.

The textbook (chapters 5 and 6) pastes object cut-outs onto background photos and keeps the masks as
JPEGs. raycv composites the same kind of scene, seeded and offline, and keeps every label exact:

- objects are procedural silhouettes (SCENE_CLASSES) or RGBA cut-outs from a folder (one subfolder per
  class), pasted at a random scale and position; later objects occlude earlier ones, and each object's
  mask is what stays visible of it;
- backgrounds are procedural textures or random crops of photos from a folder;
- a stored row is the image (PNG), an instance map (PNG, pixel value = instance number, 0 = background)
  and the COCO annotations of its objects (JSON: bbox, category_id, area, RLE segmentation).

Parameters are plain dict entries (SCENE_DEFAULTS) so `raycv detect synth --param max_objects=5` works.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from raycv.data import coco, procedural
from raycv.data.formats import image_files
from raycv.data.images import encode_png
from raycv.errors import RaycvError

if TYPE_CHECKING:
    from raycv.config import TrainConfig

# Silhouettes chosen to be told apart by outline alone, as in the book's sun/star/... cut-outs.
_SCENE_OUTLINES: dict[str, tuple[procedural.Polygon, ...] | None] = {
    "sun": procedural.normalise_outline([(procedural.star_points(12, 0.68), True)]),
    "star": procedural.normalise_outline([(procedural.star_points(5, 0.42), True)]),
    "ring": procedural.normalise_outline([(procedural.circle_points(48), True),
                                          (procedural.circle_points(40, 0.55), False)]),
    "polygon": None,  # drawn per object: a jittered convex polygon of 5 to 7 sides
}
SCENE_CLASSES = tuple(_SCENE_OUTLINES)

SCENE_DEFAULTS: dict[str, Any] = {
    "image_size": 128,
    "classes": ",".join(SCENE_CLASSES),  # a subset, e.g. "star" for single-class detection
    "min_objects": 1,
    "max_objects": 3,
    "min_scale": 0.25,  # object size (longer side) as a fraction of the image side
    "max_scale": 0.45,
    "overlap": False,  # True: objects may overlap; the occluded parts leave the masks
    "min_visible": 0.5,  # with overlap: an object must keep this share of its pixels visible
    "objects_dir": "",  # RGBA cut-outs, OBJECTS_DIR/<class>/*.png; replaces the procedural objects
    "backgrounds_dir": "",  # photos to crop backgrounds from; replaces the procedural textures
    "noise": 0.03,  # largest sensor-noise sigma (images in [0, 1])
}
MAX_PLACEMENT_TRIES = 30


def scene_classes(params: dict[str, Any]) -> list[str]:
    """Class names in label order: the cut-out folders when objects_dir is set, else `classes`."""
    if params["objects_dir"]:
        return sorted(cutouts(params["objects_dir"]))
    names = [name.strip() for name in str(params["classes"]).split(",") if name.strip()]
    unknown = [name for name in names if name not in _SCENE_OUTLINES]
    if not names or unknown:
        raise RaycvError(f"invalid classes={params['classes']!r}: expected a comma-separated subset of "
                         f"{', '.join(SCENE_CLASSES)} (or --param objects_dir=DIR with cut-outs)")
    return names


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Check every scene parameter in the driver, before any Ray task runs; returns the dataset meta."""
    checks = [
        (int(params["image_size"]) >= 32, "image_size", ">= 32"),
        (1 <= int(params["min_objects"]) <= int(params["max_objects"]) <= 255, "max_objects",
         "1 <= min_objects <= max_objects <= 255"),
        (0 < float(params["min_scale"]) <= float(params["max_scale"]) <= 1, "max_scale",
         "0 < min_scale <= max_scale <= 1"),
        (0 < float(params["min_visible"]) <= 1, "min_visible", "in (0, 1]"),
        (float(params["noise"]) >= 0, "noise", ">= 0"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise RaycvError(f"invalid scene parameter {key}={params[key]!r}: expected {expected}")
    if params["backgrounds_dir"]:
        background_files(params["backgrounds_dir"])
    size = int(params["image_size"])
    return {"classes": scene_classes(params), "image_size": [size, size], "max_objects": int(params["max_objects"])}


# ---------------------------------------------------------------------------------------------------
# Sources: procedural or from folders. Folder listings and cut-outs are cached per worker process.
# ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def background_files(folder: str) -> tuple[str, ...]:
    return tuple(image_files(folder, "backgrounds_dir"))


@lru_cache(maxsize=4)
def cutouts(folder: str) -> dict[str, tuple[np.ndarray, ...]]:
    """RGBA cut-outs by class from OBJECTS_DIR/<class>/*.png, each cropped to its opaque pixels."""
    if not os.path.isdir(folder):
        raise RaycvError(f"objects_dir {folder} is not a folder")
    by_class = {}
    for class_name in sorted(os.listdir(folder)):
        class_dir = os.path.join(folder, class_name)
        if not os.path.isdir(class_dir):
            continue
        sprites = []
        for path in image_files(class_dir, "objects_dir class folder"):
            with Image.open(path) as image:
                if "A" not in image.getbands() and "transparency" not in image.info:
                    raise RaycvError(f"object cut-out {path} has no alpha channel: save it as an RGBA PNG "
                                     "whose transparent pixels are the background")
                rgba = np.asarray(image.convert("RGBA"))
            rows, cols = np.nonzero(rgba[..., 3] >= 128)
            if len(rows) == 0:
                raise RaycvError(f"object cut-out {path} is fully transparent")
            sprites.append(rgba[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
        if sprites:
            by_class[class_name] = tuple(sprites)
    if not by_class:
        raise RaycvError(f"objects_dir {folder} has no class subfolders with RGBA PNGs ({folder}/<class>/*.png)")
    return by_class


def photo_background(rng: np.random.Generator, folder: str, size: int) -> np.ndarray:
    """A random square crop (at least half the photo's shorter side) resized to size x size, in [0, 1]."""
    files = background_files(folder)
    with Image.open(files[rng.integers(len(files))]) as photo:
        photo = photo.convert("RGB")
        side = int(min(photo.size) * rng.uniform(0.5, 1.0))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float64) / 255.0


def procedural_alpha(rng: np.random.Generator, class_name: str, size: int, extent: float,
                     center: np.ndarray) -> np.ndarray:
    """Coverage of a silhouette whose longer side is about `extent` pixels."""
    outline = _SCENE_OUTLINES[class_name]
    if outline is None:
        sides = int(rng.integers(5, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi / sides, sides) * 0.5 + np.arange(sides) * 2 * np.pi / sides)
        outline = procedural.normalise_outline([(np.stack([np.cos(angles), np.sin(angles)], axis=1), True)])
    polygons = procedural.place_outline(outline, center, extent / 2, rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.15))
    return procedural.rasterize_polygons_into(polygons, size)


def procedural_shading(rng: np.random.Generator, size: int, window: tuple[slice, slice],
                       avoid: list[np.ndarray]) -> np.ndarray:
    """A gently shaded colour that stands out from the background, for the pixels in `window` only
    (colouring the whole canvas per object was most of a scene's cost)."""
    color = procedural.contrasting_color(rng, avoid, procedural.MIN_FOREGROUND_CONTRAST)
    return procedural.colorize(procedural.linear_gradient(rng, size)[window], color,
                               procedural.nearby_color(rng, color, 0.2))


def cutout_object(rng: np.random.Generator, sprite: np.ndarray, size: int, extent: float,
                  center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, colour image) of an RGBA cut-out resized so its longer side is `extent` pixels."""
    scale = extent / max(sprite.shape[:2])
    height, width = max(1, round(sprite.shape[0] * scale)), max(1, round(sprite.shape[1] * scale))
    resized = np.asarray(Image.fromarray(sprite).resize((width, height), Image.BILINEAR), dtype=np.float64) / 255.0
    top, left = int(round(center[1] - height / 2)), int(round(center[0] - width / 2))
    alpha, color = np.zeros((size, size)), np.zeros((size, size, 3))
    # Clip the paste window to the canvas (the centre keeps objects mostly inside anyway).
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + height, size), min(left + width, size)
    alpha[y0:y1, x0:x1] = resized[y0 - top:y1 - top, x0 - left:x1 - left, 3]
    color[y0:y1, x0:x1] = resized[y0 - top:y1 - top, x0 - left:x1 - left, :3]
    return alpha, color


# ---------------------------------------------------------------------------------------------------
# The scene.
# ---------------------------------------------------------------------------------------------------


def box_window(mask: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of a non-empty boolean mask's bounding box."""
    # Projections rather than np.nonzero: listing every pixel's coordinates was 9 % of a scene's cost.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def mask_box(mask: np.ndarray) -> list[float]:
    """COCO [x, y, width, height] of a boolean mask: pixel (i, j) spans [j, j + 1) x [i, i + 1)."""
    rows, cols = box_window(mask)
    return [float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)]


def boxes_overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def composite_scene(rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
    """One stored scene row: image PNG, instance-map PNG, and COCO annotations JSON (category_id is the
    class index + 1). Deterministic: the same generator state gives byte-identical output."""
    size = int(params["image_size"])
    classes = scene_classes(params)
    if params["backgrounds_dir"]:
        image = photo_background(rng, params["backgrounds_dir"], size)
        avoid = [image.reshape(-1, 3).mean(axis=0)]
    else:
        image, avoid = procedural.random_background(rng, size)
        avoid = list(avoid)
        for _ in range(rng.integers(0, 4)):  # distractor strokes and blobs, which are not objects
            window, alpha, color = procedural.random_clutter(rng, size)
            image[window] = procedural.composite(image[window], alpha, color)

    instances = np.zeros((size, size), dtype=np.uint8)
    labels: list[int] = []
    boxes: list[list[float]] = []
    for _ in range(int(rng.integers(int(params["min_objects"]), int(params["max_objects"]) + 1))):
        for _ in range(MAX_PLACEMENT_TRIES):
            label = int(rng.integers(len(classes)))
            extent = rng.uniform(float(params["min_scale"]), float(params["max_scale"])) * size
            center = rng.uniform(extent / 2, size - extent / 2, 2)
            color = None  # procedural objects are coloured once placed, cut-outs bring their colours
            if params["objects_dir"]:
                sprites = cutouts(params["objects_dir"])[classes[label]]
                alpha, color = cutout_object(rng, sprites[rng.integers(len(sprites))], size, extent, center)
            else:
                alpha = procedural_alpha(rng, classes[label], size, extent, center)
            solid = alpha >= 0.5
            if not solid.any():
                continue
            if not params["overlap"]:
                if any(boxes_overlap(mask_box(solid), box) for box in boxes):
                    continue
            else:
                covered = np.bincount(instances[solid], minlength=len(labels) + 1)[1:]
                before = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1:]
                if np.any(before - covered < float(params["min_visible"]) * np.maximum(before, 1)):
                    continue
            window = box_window(alpha > 0)
            color = procedural_shading(rng, size, window, avoid) if color is None else color[window]
            image[window] = procedural.composite(image[window], alpha[window], color)
            instances[solid] = len(labels) + 1
            labels.append(label)
            boxes.append(mask_box(solid))
            break

    # float32 noise: drawing 300x300x3 doubles was a tenth of a scene's cost.
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0.0, float(params["noise"]))
    annotations = []
    for index, label in enumerate(labels):
        visible = instances == index + 1
        annotations.append({"bbox": mask_box(visible), "category_id": label + 1, "area": int(visible.sum()),
                            "iscrowd": 0, "segmentation": coco.encode_rle(visible)})
    return {"image": encode_png(procedural.to_uint8(image)), "mask": encode_png(instances),
            "annotations": json.dumps(annotations)}


# Scale jitter of training photos, a factor on the letterbox scale: objects are seen from two thirds to
# one and a half times their letterboxed size, then a side x side window is cut (padded where smaller).
# ---------------------------------------------------------------------------------------------------
# Stored scene rows to training arrays.
# ---------------------------------------------------------------------------------------------------

TRAIN_SCALE_RANGE = (0.67, 1.5)
MIN_BOX_SIDE = 2.0  # pixels: a box cropped thinner than this is no longer an object to find
CROWD = 255  # semantic value of crowd regions: ignored by segment's loss and metrics, as pycocotools does


def scene_arrays(image_bytes: bytes, mask_bytes: bytes | None,
                 objects: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(image HWC uint8, instance map HW uint8) of a stored row at its own size. Synthesized rows carry their
    instance map; users' photos are drawn from their annotations' masks. Raises ValueError when unreadable."""
    from raycv.data.images import decode_image

    image = decode_image(image_bytes)
    if mask_bytes is not None:
        return image, decode_image(mask_bytes, mode="L")
    return image, coco.instance_map(objects, *image.shape[:2])


def jittered_scene(image: np.ndarray, instances: np.ndarray, boxes: np.ndarray, side: int,
                   crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A training view of a photo (transforms.v2 on tv_tensors, so boxes and masks follow the pixels): the
    scale of its side x side letterbox times a random factor, a random crop x crop window (padded where the
    photo is smaller), a horizontal flip and colour jitter. Returns (image, instance map, boxes xyxy, indices
    of the boxes kept)."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from raycv.data.annotated import PAD_VALUE, letterbox_scale

    height, width = image.shape[:2]
    factor = letterbox_scale(height, width, side) * float(torch.empty(1).uniform_(*TRAIN_SCALE_RANGE))
    transform = v2.Compose([
        v2.Resize([max(1, round(height * factor)), max(1, round(width * factor))], antialias=True),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: PAD_VALUE, tv_tensors.Mask: 0}),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02),
        v2.ClampBoundingBoxes(),
    ])
    pixels, mask, moved = transform(tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1)),
                                    tv_tensors.Mask(torch.from_numpy(np.array(instances))),
                                    tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY",
                                                             canvas_size=(height, width)))
    moved = moved.numpy()
    kept = np.flatnonzero((moved[:, 2] - moved[:, 0] >= MIN_BOX_SIDE) & (moved[:, 3] - moved[:, 1] >= MIN_BOX_SIDE))
    return pixels.permute(1, 2, 0).numpy(), mask.numpy(), moved[kept], kept


def decode_scenes(batch: dict[str, np.ndarray], meta: dict[str, Any], train: bool = False) -> dict[str, np.ndarray]:
    """Stored scene rows to arrays at the training resolution S = meta["image_size"][0]: image (B, S, S, 3) uint8,
    letterboxed (train=True: a jittered view, see jittered_scene); semantic (B, S, S) uint8 (class index + 1, 0 =
    background, CROWD in crowd regions); boxes (B, M, 4) float32 xyxy in pixels, labels (B, M) int64 (class index)
    and crowd (B, M) bool, padded with -1 (labels, boxes) up to M = meta["max_objects"]; scale (B,) float32, the
    letterbox factor (original pixels = pixels / scale). Rows whose image cannot be read are skipped and logged."""
    from raycv.data.annotated import letterbox, letterbox_scale, log_skipped

    side, slots = int(meta["image_size"][0]), int(meta["max_objects"])
    crop = int(meta.get("crop_size", side))
    masks = batch["mask"] if "mask" in batch else [None] * len(batch["image"])
    row_ids = batch["id"] if "id" in batch else range(len(batch["image"]))
    images, semantics, scales, skipped = [], [], [], []
    boxes = np.full((len(batch["image"]), slots, 4), -1.0, dtype=np.float32)
    labels = np.full((len(batch["image"]), slots), -1, dtype=np.int64)
    crowd = np.zeros((len(batch["image"]), slots), dtype=bool)
    for image_bytes, mask_bytes, annotations_json, row_id in zip(batch["image"], masks, batch["annotations"],
                                                                 row_ids, strict=True):
        objects = json.loads(annotations_json)
        try:
            image, instances = scene_arrays(image_bytes, mask_bytes, objects)
        except ValueError:
            skipped.append(str(row_id))
            continue
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)],
                        dtype=np.float32).reshape(-1, 4)
        if train:
            image, instances, xyxy, kept = jittered_scene(image, instances, xyxy, side, crop)
            scale = 1.0
        else:
            scale = letterbox_scale(*image.shape[:2], side)
            image, instances = letterbox(image, side), letterbox(instances, side, Image.NEAREST, fill=0)
            xyxy, kept = xyxy * scale, np.arange(len(objects))
        row = len(images)
        categories = np.array([0] + [o["category_id"] for o in objects], dtype=np.int64)
        is_crowd = np.array([False] + [bool(o.get("iscrowd", 0)) for o in objects])
        boxes[row, :len(kept)] = xyxy
        labels[row, :len(kept)] = categories[kept + 1] - 1
        crowd[row, :len(kept)] = is_crowd[kept + 1]
        images.append(image)
        semantics.append(np.where(is_crowd, CROWD, categories).astype(np.uint8)[instances])
        scales.append(scale)
    log_skipped(skipped)
    count, out = len(images), crop if train else side
    return {"image": np.stack(images) if images else np.zeros((0, out, out, 3), np.uint8),
            "semantic": np.stack(semantics) if semantics else np.zeros((0, out, out), np.uint8),
            "boxes": boxes[:count], "labels": labels[:count], "crowd": crowd[:count],
            "scale": np.array(scales, dtype=np.float32)}


def output_kind(out: str) -> str | None:
    """What a folder prediction's --out names: "json" (a .json file), "folder" (a path without a file suffix, or
    ending in /), or None (another file type, left to the generic writers)."""
    name = out.rstrip("/").rsplit("/", 1)[-1]
    if out.lower().endswith(".json"):
        return "json"
    return "folder" if out.endswith("/") or "." not in name else None


def category_ids(meta: dict[str, Any]) -> list[int]:
    """The set's own id of each class (a COCO set's may skip numbers); 1..K for raycv's scenes."""
    return meta.get("category_ids") or list(range(1, len(meta["classes"]) + 1))


class SceneData:
    """The data half of the Task interface, shared by every task trained on scenes (detect, segment): synthesis,
    users' COCO and YOLO sets, the letterbox at the training resolution, and the COCO JSON beside each split."""

    synth_defaults = SCENE_DEFAULTS

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        return validate_params(params)

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        return composite_scene(rng, params)

    def check_data(self, path: str, cfg: TrainConfig) -> None:
        list_annotated(path)

    def read(self, path: str, cfg: TrainConfig | None = None):
        from raycv.data.annotated import read_annotated

        listed = list_annotated(path)
        return read_annotated(listed), listed.meta()

    def training_meta(self, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
        """Users' photos train at --image-size (the letterboxed long side; USER_IMAGE_SIZE by default),
        raycv's scenes at their own size unless --image-size says otherwise. --crop-size (users' photos only)
        trains on windows of that side cut at the --image-size scale."""
        option = cfg.extra.get("image_size", "auto")
        if option == "auto":
            side = int(meta["image_size"][0]) if "image_size" in meta else USER_IMAGE_SIZE
        else:
            side = int(option)
        crop = cfg.extra.get("crop_size", "auto")
        if crop == "auto":
            return {**meta, "image_size": [side, side]}
        if int(crop) > side:
            raise RaycvError(f"invalid --crop-size {crop}: larger than the image size {side} it is cut from")
        if not self.augments_rows(meta):
            raise RaycvError(f"--crop-size applies to COCO and YOLO sets, whose photos are cropped as they stream; "
                             f"{meta.get('source', 'this dataset')} is a raycv scene set, which trains whole")
        return {**meta, "image_size": [side, side], "crop_size": int(crop)}

    def augments_rows(self, meta: dict[str, Any]) -> bool:
        return meta.get("format") in USER_FORMATS

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        return decode_scenes(batch, meta)

    def decode_train(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        return decode_scenes(batch, meta, train=self.augments_rows(meta))

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]):
        """Request images letterboxed to the training resolution, as validation saw its photos."""
        import torch

        from raycv.data.annotated import letterbox
        from raycv.data.images import to_model_input

        side = int(meta["image_size"][0])
        return to_model_input(torch.from_numpy(np.stack([letterbox(image, side) for image in images])))

    def export_split(self, dataset_dir: str, split: str, meta: dict[str, Any]) -> None:
        coco.write_split_annotations(dataset_dir, split, meta)


# The training resolution of users' photos by default: the long side, letterboxed. 320 rather than the 640 of
# detectors trained on GPUs: a quarter of the pixels, so about four times the photos per second on a CPU, and
# objects of a tenth of a photo's side still span 32 pixels, eight cells of the detector's stride-4 output.
USER_IMAGE_SIZE = 320
USER_FORMATS = ("coco", "yolo")


@lru_cache(maxsize=2)  # check_data lists a set before Ray starts, read lists it again: parse a large JSON once
def list_annotated(path: str):
    """The COCO or YOLO set at `path`, listed and checked (raycv/data/annotated.py), or a RaycvError saying
    what was looked for."""
    from raycv.data import yolo

    if coco.is_coco(path):
        return coco.list_coco(path)
    if yolo.find_yaml(path):
        return yolo.list_yolo(path)
    raise RaycvError(f"{path} is neither a raycv scene dataset (no manifest.json), nor a COCO set "
                     "(annotations/instances_train2017.json and instances_val2017.json, or train.json and val.json), "
                     "nor a YOLO set (data.yaml)")
