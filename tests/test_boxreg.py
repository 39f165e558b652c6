"""Box regression: the synthesized box is where the image was pasted, and the model learns it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import train_steps

from raycv.config import TrainConfig
from raycv.errors import RaycvError
from raycv.tasks import get_task
from raycv.tasks.boxreg import CANVAS_GRAY, paste_on_canvas

TASK = get_task("boxreg")
PARAMS = TASK.synth_defaults


def rows(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    samples = [TASK.synthesize_sample(np.random.default_rng([seed, i]), PARAMS) for i in range(count)]
    batch = {key: np.array([s[key] for s in samples], dtype=object if key == "image" else None) for key in samples[0]}
    return TASK.decode(batch, TASK.dataset_meta(PARAMS))


def test_box_is_where_the_image_was_pasted():
    rng = np.random.default_rng(1)
    image = np.full((32, 32, 3), 250, dtype=np.uint8)  # bright, far from the canvas gray
    canvas, (x1, y1, x2, y2) = paste_on_canvas(rng, image, max_ratio=2.0)
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 and (x2 - x1) * (y2 - y1) >= 0.25 - 1e-6
    bright = canvas[..., 0] > (CANVAS_GRAY + 250) / 2
    rows_, cols = np.nonzero(bright)
    # the bright area's bounds match the box to within the one-pixel blur of the resize
    assert abs(cols.min() - x1 * 32) <= 1 and abs(cols.max() + 1 - x2 * 32) <= 1
    assert abs(rows_.min() - y1 * 32) <= 1 and abs(rows_.max() + 1 - y2 * 32) <= 1


def test_training_steps_raise_the_iou_and_flips_keep_boxes_right():
    torch.manual_seed(0)
    batch = {key: torch.from_numpy(value) for key, value in rows(64).items()}
    cfg = TASK.default_config().replace(width=0.25)
    model = TASK.build_model(cfg, TASK.dataset_meta(PARAMS))
    flipped = TASK.augment(batch, cfg)
    for image, box in zip(flipped["image"], flipped["box"], strict=False):
        bright_columns = (image - CANVAS_GRAY / 255).abs().amax(dim=(0, 1)) > 0.05
        columns = torch.nonzero(bright_columns).flatten()
        assert abs(columns.min() - box[0] * 32) <= 2 and abs(columns.max() + 1 - box[2] * 32) <= 2

    def mean_iou() -> float:
        model.eval()
        return TASK.evaluate(model, [batch], {})["iou"]

    before = mean_iou()
    model.train()
    train_steps(TASK, model, batch, cfg, 40)
    assert mean_iou() > before + 0.2


def test_postprocess_gives_boxes_in_the_callers_pixels():
    outputs = torch.logit(torch.tensor([[0.5, 0.5, 0.5, 0.25]]))  # centre, half as wide, a quarter as tall
    [answer] = TASK.postprocess(outputs, {}, [(200, 400)])
    assert answer["box"] == [100.0, 75.0, 300.0, 125.0]


def test_bad_parameters_and_real_data_are_refused(tmp_path):
    with pytest.raises(RaycvError, match="invalid max_ratio=0.5"):
        TASK.dataset_meta({**PARAMS, "max_ratio": 0.5})
    with pytest.raises(RaycvError, match="images_dir .* holds no images"):
        TASK.dataset_meta({**PARAMS, "images_dir": str(tmp_path)})
    with pytest.raises(RaycvError, match="raycv boxreg synth --out DIR --param images_dir="):
        TASK.read(str(tmp_path), TASK.default_config())
    with pytest.raises(RaycvError, match="unknown model 'vgg'"):
        TASK.build_model(TrainConfig(model="vgg"), {})
