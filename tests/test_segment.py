"""The segment task: the UNet, its loss and metrics, masks back at the caller's size, and the danmu demo
as a function, a CLI verb and a Serve route."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import served

from raycv.checkpoint import load_model
from raycv.cli import main
from raycv.synth import open_dataset, sample_generator, synthesize
from raycv.errors import RaycvError
from raycv.data.images import to_model_input
from raycv.inference import evaluate_checkpoint, predict
from raycv.models.detection import CenterDetector
from raycv.models.unet import PyramidSegmenter, UNet
from raycv.tasks import get_task
from raycv.tasks.segment import (BACKGROUND_PRIOR, class_map_from_answer, danmu_from_answer, draw_danmu,
                                 scores_from_confusion, weighted_cross_entropy)
from raycv.train import build_optimizer, fit, train_step

TASK = get_task("segment")
SMALL_SCENES = {"image_size": 64}  # objects of 16-29 px: enough to learn from in seconds
TINY = dict(width=0.25, batch_size=8, lr=3e-3, workers=2, cpus_per_worker=1)


def scene_batch(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    params = {**TASK.synth_defaults, **SMALL_SCENES}
    rows = [TASK.synthesize_sample(sample_generator(seed, "train", index), params) for index in range(count)]
    stored = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    return TASK.decode(stored, TASK.dataset_meta(params))


@pytest.mark.parametrize("network", [UNet, PyramidSegmenter])
def test_networks_keep_the_input_size_and_refuse_sides_not_multiple_of_32(network):
    model = network(num_classes=5, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 96)).shape == (2, 5, 64, 96)
        with pytest.raises(RaycvError, match=r"100x100 pixels.*multiples of 32"):
            model(torch.rand(1, 3, 100, 100))
    with pytest.raises(RaycvError, match=r"image_size 100x100.*multiples of 32"):
        TASK.build_model(TASK.default_config(), {"classes": ["star"], "image_size": [100, 100]})


def test_networks_start_out_calling_pixels_background_and_the_pyramid_takes_a_detectors_layers():
    meta = {"classes": ["a", "b"], "image_size": [64, 64]}
    for name in ("unet_resnet18", "fpn_resnet18"):
        model = TASK.build_model(TASK.default_config().replace(model=name, width=0.25), meta)
        bias = model.net.output_layer.bias
        assert torch.allclose(bias.softmax(dim=0), torch.tensor([BACKGROUND_PRIOR, 0.1, 0.1]))
    detector = CenterDetector(num_classes=2, width=0.25).state_dict()
    heads = ("heatmap_tower", "box_tower", "output")
    body = {key: value for key, value in detector.items() if not key.startswith(heads)}
    segmenter = PyramidSegmenter(num_classes=3, width=0.25)
    loaded = segmenter.load_state_dict(body, strict=False)
    assert not loaded.unexpected_keys
    assert {key.split(".")[0] for key in loaded.missing_keys} == {"head"}
    assert len(loaded.missing_keys) >= len(list(segmenter.head.parameters()))


def test_flip_tta_averages_each_logit_map_with_its_mirrors_flipped_back():
    meta = {"classes": ["a", "b"], "image_size": [64, 64]}
    cfg = TASK.default_config().replace(model="fpn_resnet18", width=0.25)
    plain = TASK.build_model(cfg, meta).eval()
    averaged = TASK.build_model(cfg.replace(extra={**cfg.extra, "tta": "flip"}), meta).eval()
    averaged.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1)).flip(-1)) / 2
        assert torch.allclose(averaged(x), expected, atol=1e-5)
        assert torch.allclose(averaged(x.flip(-1)).flip(-1), averaged(x), atol=1e-5)  # mirror-equivariant
        assert not torch.allclose(plain(x.flip(-1)).flip(-1), plain(x), atol=1e-3)


def test_scale_tta_averages_the_logit_maps_of_enlarged_inputs_resized_back():
    meta = {"classes": ["a", "b"], "image_size": [64, 64]}
    cfg = TASK.default_config().replace(model="fpn_resnet18", width=0.25)
    plain = TASK.build_model(cfg, meta).eval()
    scaled = TASK.build_model(cfg.replace(extra={**cfg.extra, "tta": "flip", "tta_scales": "1,1.5"}), meta).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 96)
    resize = torch.nn.functional.interpolate
    with torch.no_grad():
        large = resize(x, (96, 128), mode="bilinear", align_corners=False)  # 1.5 x (64, 96), to multiples of 32
        maps = [plain(x), plain(x.flip(-1)).flip(-1), plain(large), plain(large.flip(-1)).flip(-1)]
        maps[2:] = [resize(m, (64, 96), mode="bilinear", align_corners=False) for m in maps[2:]]
        assert torch.allclose(scaled(x), torch.stack(maps).mean(dim=0), atol=1e-5)
        assert not torch.allclose(scaled(x), (maps[0] + maps[1]) / 2, atol=1e-3)  # the enlargement counts


def test_evaluation_changes_test_time_augmentation_and_nothing_else(tmp_path, capsys):
    from conftest import png_bytes, saved_checkpoint

    meta = {"classes": ["a", "b"], "image_size": [64, 64]}
    cfg = TASK.default_config().replace(model="fpn_resnet18", width=0.25)
    folder = saved_checkpoint(TASK, cfg, meta, str(tmp_path / "seg"))
    assert load_model(folder).model.scales == (1.0,) and not load_model(folder).model.flip
    changed = load_model(folder, options={"tta": "flip", "tta_scales": "1,1.25"}).model
    assert changed.scales == (1.0, 1.25) and changed.flip
    with pytest.raises(RaycvError, match="background_weight cannot change after training a segment model"):
        load_model(folder, options={"background_weight": 0.5})
    with pytest.raises(RaycvError, match="invalid tta_scales='0,1'"):
        load_model(folder, options={"tta_scales": "0,1"})
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)))
    assert main(["segment", "predict", "--checkpoint", folder, "--tta-scales", "1,1.25", str(image)]) == 0
    assert "scene.png:" in capsys.readouterr().out
    assert main(["segment", "predict", "--checkpoint", folder, "--tta-scales", "big", str(image)]) == 2
    assert "invalid tta_scales='big'" in capsys.readouterr().err
    assert main(["segment", "predict", "--url", "http://127.0.0.1:9", "--tta", "flip", str(image)]) == 2
    assert "a Serve app at --url answers as it was started" in capsys.readouterr().err
    from raycv.config import ServeOptions
    from raycv.serve import build_app

    with pytest.raises(RaycvError, match="invalid tta_scales='9'"):  # refused before any replica starts
        build_app(ServeOptions(checkpoint=folder, task="segment", inference_options={"tta_scales": "9"}))


@pytest.mark.parametrize("model", ["unet_resnet18", "fpn_resnet18"])
def test_training_steps_lower_the_loss(model):
    torch.manual_seed(0)
    batch = {key: torch.from_numpy(value) for key, value in scene_batch(8).items()}
    cfg = TASK.default_config().replace(model=model, width=0.25, lr=3e-3, epochs=1, amp="off")
    meta = {"classes": list(TASK.dataset_meta(TASK.synth_defaults)["classes"]), "image_size": [64, 64]}
    model = TASK.build_model(cfg, meta)
    optimizer, scheduler = build_optimizer(model, cfg.replace(schedule="constant"), steps_per_epoch=30)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [float(train_step(TASK, model, batch, cfg, optimizer, scheduler, scaler, None)) for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


def test_background_weight_scales_the_background_pixels_share_of_the_loss():
    # Two pixels, one background and one object, each predicted with the same confidence: the weighted mean
    # cross-entropy is (w * l + l) / (w + 1) = l whatever w, so the test predicts them differently.
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 x 2 classes x 1 x 2 pixels
    target = torch.tensor([[[0, 1]]])
    background, foreground = (float(torch.nn.functional.cross_entropy(logits[..., i], target[..., i]))
                              for i in range(2))
    cfg = TASK.default_config().replace(model="fpn_resnet18", width=0.25, amp="off", extra={"background_weight": 0.6})
    model = TASK.build_model(cfg, {"classes": ["a"], "image_size": [32, 32]}).eval()
    for weight in (0.3, 0.6, 1.0):
        expected = (weight * background + foreground) / (weight + 1)
        assert float(weighted_cross_entropy(logits, target, weight)) == pytest.approx(expected)
    # The task's loss takes the weight from the run's options.
    semantic = torch.zeros(1, 32, 32, dtype=torch.uint8)
    semantic[:, 8:20, 8:20] = 1
    batch = {"image": torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8), "semantic": semantic}
    with torch.no_grad():
        logits = model(to_model_input(batch["image"]))
        for weight in (0.3, 0.6):
            loss = TASK.loss(model, batch, cfg.replace(extra={"background_weight": weight, "dice_weight": 0}))
            assert float(loss) == pytest.approx(float(weighted_cross_entropy(logits, semantic.long(), weight)))
    with pytest.raises(RaycvError, match="invalid background_weight=0: expected a weight in"):
        TASK.card.check_options({"background_weight": 0})


def test_scores_from_a_known_confusion_matrix():
    # rows: target background, star, ring; columns: predicted
    confusion = torch.tensor([[80, 5, 0],
                              [5, 10, 0],
                              [0, 5, 15]])
    scores = scores_from_confusion(confusion)
    # any object vs background: intersection 10 + 0 + 5 + 15 = 30, union 100 - 80 = 20 + 30
    assert scores["foreground_iou"] == pytest.approx(30 / 40)
    assert scores["miou"] == pytest.approx(np.mean([80 / 90, 10 / 25, 15 / 20]))
    assert scores["dice"] == pytest.approx(np.mean([160 / 170, 20 / 35, 30 / 35]))


def test_evaluate_scores_a_perfect_prediction_as_one():
    decoded = scene_batch(4)
    target = torch.from_numpy(decoded["semantic"]).long()
    meta = {"classes": TASK.dataset_meta(TASK.synth_defaults)["classes"], "image_size": [64, 64]}

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images):
            return torch.nn.functional.one_hot(target, len(meta["classes"]) + 1).permute(0, 3, 1, 2).float() * 10

    metrics = TASK.evaluate(Oracle(), [{"image": torch.from_numpy(decoded["image"]), "semantic": target}], meta)
    assert metrics["foreground_iou"] == metrics["miou"] == metrics["dice"] == 1.0
    assert metrics["loss"] < 1e-3


def test_postprocess_gives_the_mask_and_outlines_at_the_original_size():
    meta = {"classes": ["sun", "star"], "image_size": [64, 64]}
    logits = torch.zeros(1, 3, 64, 64)
    logits[0, 0] = 1.0
    # The 100x200 request letterboxed into 64x64: scaled by 0.32, its rows in the top 32, padding below.
    logits[0, 2, 8:24, 8:40] = 5.0
    logits[0, 1, 40:, :] = 9.0  # whatever is predicted on the padding is not part of the answer
    (answer,) = TASK.postprocess(logits, meta, [(100, 200)])
    class_map = class_map_from_answer(answer)
    assert class_map.shape == (100, 200)
    assert set(np.unique(class_map)) == {0, 2} and answer["classes"] == ["background", "sun", "star"]
    rows, cols = np.nonzero(class_map == 2)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (25, 75, 25, 125)  # x3.125
    (polygon,) = answer["polygons"]
    points = np.array(polygon["points"])
    assert polygon["class"] == "star" and not polygon["hole"]
    assert (points.min(axis=0).tolist(), points.max(axis=0).tolist()) == ([25, 25], [124, 74])


def test_danmu_paints_text_on_the_background_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (160, 240, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:160, :240]
    foreground = (rows - 80) ** 2 + (cols - 120) ** 2 < 60 ** 2
    texts = ["passing behind", "the foreground", "danmu 6.5", "more comments here"]
    unmasked = (draw_danmu(image, np.zeros_like(foreground), texts, offset=5) != image).any(axis=-1)
    drawn = draw_danmu(image, foreground, texts, offset=5)
    changed = (drawn != image).any(axis=-1)
    assert (drawn[foreground] == image[foreground]).all()
    assert changed.sum() > 500  # the text is really there
    assert (unmasked & foreground).sum() > 200  # some of it would have crossed the disc...
    assert (changed == (unmasked & ~foreground)).all()  # ...and exactly that part went behind it
    with pytest.raises(RaycvError, match="does not match"):
        draw_danmu(image, foreground[:10], texts)


def test_danmu_verb_belongs_to_segment_only(capsys):
    for task, expected in (("segment", True), ("classify", False)):
        with pytest.raises(SystemExit) as exit_info:
            main([task, "--help"])
        assert exit_info.value.code == 0
        assert ("danmu" in capsys.readouterr().out) is expected


@pytest.fixture(scope="module")
def segment_run(ray_session, tmp_path_factory):
    """A two-worker fit on 64x64 scenes: too short to segment well, long enough to exercise every path."""
    folder = tmp_path_factory.mktemp("segment")
    data = str(folder / "data")
    synthesize(TASK, data, {"train": 64, "val": 32}, seed=3, params=SMALL_SCENES)
    cfg = TASK.default_config().replace(epochs=2, storage=str(folder / "runs"), name="tiny", **TINY)
    return fit(TASK, cfg, data), data


def test_fit_reports_segmentation_metrics_that_eval_reproduces(segment_run):
    result, data = segment_run
    assert [row["workers"] for row in result.history] == [2, 2]
    for key in ("val_foreground_iou", "val_miou", "val_dice", "val_loss"):
        assert 0 <= result.history[-1][key] <= (10 if key == "val_loss" else 1), result.history
    # the DDP workers measured halves of the split and torchmetrics summed them
    metrics = evaluate_checkpoint(result.best_checkpoint, data, task_name="segment")
    assert metrics["samples"] == 32
    assert abs(metrics["foreground_iou"] - result.best_metrics["val_foreground_iou"]) < 0.03


def test_danmu_cli_writes_the_picture(segment_run, tmp_path, capsys):
    result, data = segment_run
    splits, _ = open_dataset(TASK, data)
    image_path, out = tmp_path / "scene.png", tmp_path / "danmu.png"
    image_path.write_bytes(bytes(splits["val"].take(1)[0]["image"]))
    assert main(["segment", "danmu", "--checkpoint", result.best_checkpoint, "--image", str(image_path),
                 "--text", "hello", "--text", "world", "--out", str(out)]) == 0
    assert "2 comment(s)" in capsys.readouterr().out
    # exactly the picture the model's mask and draw_danmu make (this short run's masks are poor, so the
    # text may have little background to show on: test_danmu_paints_text_on_the_background_only checks that)
    image = np.asarray(Image.open(image_path).convert("RGB"))
    answer = predict(load_model(result.best_checkpoint, "segment"), [image])[0]
    assert np.array_equal(np.asarray(Image.open(out)), danmu_from_answer(image, answer, ["hello", "world"]))


def test_danmu_route_on_serve(segment_run):
    result, data = segment_run
    splits, _ = open_dataset(TASK, data)
    scene = bytes(splits["val"].take(1)[0]["image"])
    with served(result.best_checkpoint, "segment") as base:
        url = f"{base}/v1/segment"
        png = {"content": scene, "headers": {"content-type": "image/png"}, "timeout": 60}
        drawn = httpx.post(f"{url}/danmu", params=[("text", "hello"), ("text", "world")], **png)
        assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png", drawn.text
        assert Image.open(io.BytesIO(drawn.content)).size == Image.open(io.BytesIO(scene)).size
        predicted = httpx.post(f"{url}/predict", **png).json()["predictions"][0]
        assert base64.b64decode(predicted["mask_png"]).startswith(b"\x89PNG")
        assert httpx.get(f"{base}/v1/models").json()["routes"] == ["predict", "danmu"]

        no_text = httpx.post(f"{url}/danmu", **png)
        assert no_text.status_code == 422 and "text" in no_text.json()["detail"]
        bad_seed = httpx.post(f"{url}/danmu", params={"text": "hi", "seed": "x"}, **png)
        assert bad_seed.status_code == 422 and "seed='x'" in bad_seed.json()["detail"]
        corrupt = httpx.post(f"{url}/danmu", params={"text": "hi"}, content=b"\x89PNG garbage",
                             headers={"content-type": "image/png"})
        assert corrupt.status_code == 400  # the same image validation as /predict
        two_images = httpx.post(f"{url}/danmu", params={"text": "hi"},
                                json={"images": [base64.b64encode(scene).decode()] * 2})
        assert two_images.status_code == 422 and "one image" in two_images.json()["detail"]
        unknown = httpx.post(f"{url}/karaoke", **png)
        assert unknown.status_code == 404 and "danmu" in unknown.json()["detail"]
