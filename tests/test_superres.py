"""The superres task: pairs, Y-channel metrics, the networks, the predict path (any size, tiles, batches)
and one short Ray run through train, eval-photos and the Serve route."""

from __future__ import annotations

import io
import math

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import png_bytes, served, train_steps

from raycv.checkpoint import load_model
from raycv.cli import main
from raycv.data import quality, resample
from raycv.synth import synthesize
from raycv.errors import RaycvError
from raycv.inference import predict
from raycv.tasks import get_task
from raycv.tasks.routes import answer_image
from raycv.tasks.superres import make_pair

TASK = get_task("superres")
SMALL = {**TASK.synth_defaults, "crop_size": 32}


def pair_batch(count: int, params: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    params = params or SMALL
    rows = [TASK.synthesize_sample(np.random.default_rng([seed, index]), params) for index in range(count)]
    decoded = TASK.decode({key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]},
                          TASK.dataset_meta(params))
    return {key: torch.from_numpy(value) for key, value in decoded.items()}


def test_pairs_are_deterministic_and_the_low_resolution_is_the_bicubic_shrink():
    first = TASK.synthesize_sample(np.random.default_rng([3, 1]), SMALL)
    assert first == TASK.synthesize_sample(np.random.default_rng([3, 1]), SMALL)
    assert first["hr"] != TASK.synthesize_sample(np.random.default_rng([3, 2]), SMALL)["hr"]
    high = np.asarray(Image.open(io.BytesIO(first["hr"])))
    low = np.asarray(Image.open(io.BytesIO(first["lr"])))
    assert high.shape == (32, 32, 3) and low.shape == (16, 16, 3)
    assert np.array_equal(low, resample.bicubic_downscale(high, 2))
    x4 = pair_batch(2, {**SMALL, "scale": 4})
    assert x4["lr"].shape == (2, 8, 8, 3) and x4["hr"].shape == (2, 32, 32, 3)


def test_sizes_not_divisible_by_the_scale_are_cropped_or_refused_clearly():
    odd = np.random.default_rng(0).integers(0, 256, (101, 77, 3), dtype=np.uint8)
    with pytest.raises(RaycvError, match=r"101x77 image cannot be downscaled x2.*100x76"):
        resample.bicubic_downscale(odd, 2)
    low, high = make_pair(odd, 2)
    assert high.shape == (100, 76, 3) and low.shape == (50, 38, 3)
    assert np.array_equal(high, odd[:100, :76])
    with pytest.raises(RaycvError, match=r"crop_size=65.*multiple of scale=2"):
        TASK.dataset_meta({**SMALL, "crop_size": 65})
    with pytest.raises(RaycvError, match=r"scale=5.*2, 3, 4"):
        TASK.dataset_meta({**SMALL, "scale": 5})
    with pytest.raises(RaycvError, match="not a folder"):
        TASK.dataset_meta({**SMALL, "images_dir": "/no/such/folder"})


def test_psnr_and_ssim_on_y_of_a_known_difference():
    image = np.random.default_rng(1).integers(20, 200, (40, 40, 3), dtype=np.uint8)
    brighter = image + np.uint8(10)
    # +10 on R, G and B moves studio-range Y by 10 * (65.481 + 128.553 + 24.966) / 255 = 10 * 219 / 255 levels
    expected = 20 * math.log10(255 * 255 / (10 * 219))
    psnr, ssim = quality.psnr_ssim(brighter, image)
    assert psnr == pytest.approx(expected, abs=1e-3) and 0.9 < ssim < 1.0
    # the shaved border is left out: damage there costs nothing
    damaged = brighter.copy()
    damaged[:2] = 0
    assert quality.psnr_ssim(damaged, image, border=2)[0] == pytest.approx(expected, abs=1e-3)
    assert quality.psnr_ssim(damaged, image)[0] < expected - 3


def test_masked_psnr_measures_only_the_masked_pixels():
    reference = torch.full((1, 3, 8, 8), 0.5)
    result = reference.clone()
    result[..., :4, :] = 0.0  # wrong outside the mask
    result[..., 4:, :4] += 16 / 255  # off by 16 levels inside it
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :4] = 1
    assert float(quality.masked_psnr(result, reference, mask)) == pytest.approx(20 * math.log10(255 / 16), abs=1e-3)


def test_a_few_training_steps_beat_bicubic():
    torch.manual_seed(0)
    batch = pair_batch(16)
    cfg = TASK.default_config()
    meta = TASK.dataset_meta(SMALL)
    model = TASK.build_model(cfg, meta)
    model.eval()
    with torch.no_grad():
        before = TASK.evaluate(model, [batch], meta)
    model.train()
    # 120 steps: at the default width 1.0, Adam's first steps knock the net off bicubic (a 5-7x loss spike)
    # and 60 steps only just won it back (loss ratio 0.955-0.972 over 3 seeds; 120: 0.914-0.941)
    losses = train_steps(TASK, model, TASK.augment(batch, cfg), cfg, 120, lr=2e-3)
    model.eval()
    with torch.no_grad():
        after = TASK.evaluate(model, [batch], meta)
    assert np.mean(losses[-5:]) < 0.97 * losses[0], losses  # the first loss is bicubic's: the net starts there
    assert after["psnr"] > before["psnr"] + 0.2 and after["psnr_gain"] > 0.4, (before, after)


def test_both_networks_upscale_any_size_and_tiles_match_the_whole_image():
    meta = TASK.dataset_meta({**SMALL, "scale": 3, "crop_size": 48})
    for name in TASK.model_names:
        model = TASK.build_model(TASK.default_config().replace(model=name), meta).eval()
        with torch.no_grad():
            assert model(torch.rand(2, 3, 17, 23)).shape == (2, 3, 51, 69)
            image = torch.rand(1, 3, 70, 90)
            model.TILE = 32  # force tiling at this size
            tiled = model(image)
            model.TILE = 10_000
            assert (tiled - model(image)).abs().max() < 1e-5


def test_predict_returns_pngs_of_scale_times_the_size_whatever_the_batch():
    meta = TASK.dataset_meta(SMALL)
    cfg = TASK.default_config()
    loaded = type("Loaded", (), {"task": TASK, "model": TASK.build_model(cfg, meta).eval(), "dataset_meta": meta})()
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((17, 23, 3), (40, 31, 3), (1, 1, 3))]
    answers = predict(loaded, images)
    assert [answer_image(answer).shape for answer in answers] == [(34, 46, 3), (80, 62, 3), (2, 2, 3)]
    assert [(answer["width"], answer["height"], answer["scale"]) for answer in answers] == [(46, 34, 2), (62, 80, 2),
                                                                                              (2, 2, 2)]
    alone = predict(loaded, images[:1])[0]
    assert np.array_equal(answer_image(alone), answer_image(answers[0]))  # batching does not change an answer


@pytest.fixture(scope="module")
def superres_run(ray_session, tmp_path_factory):
    """A one-epoch, two-worker fit on 32-px crops: enough to exercise every path."""
    from raycv.train import fit

    folder = tmp_path_factory.mktemp("superres")
    data = str(folder / "data")
    synthesize(TASK, data, {"train": 64, "val": 16}, seed=5, params=SMALL)
    cfg = TASK.default_config().replace(epochs=1, batch_size=8, workers=2, cpus_per_worker=1,
                                        storage=str(folder / "runs"), name="tiny")
    return fit(TASK, cfg, data), folder


def test_fit_reports_psnr_beside_bicubic_and_eval_photos_prints_the_table(superres_run, capsys):
    result, folder = superres_run
    (row,) = result.history
    assert row["workers"] == 2
    for key in ("val_psnr", "val_psnr_bicubic", "val_ssim", "val_ssim_bicubic", "val_psnr_gain"):
        assert key in row
    assert (20 < row["val_psnr_bicubic"] < 40
            and abs(row["val_psnr"] - row["val_psnr_bicubic"] - row["val_psnr_gain"]) < 1e-6)
    out = folder / "photos"
    assert main(["superres", "eval-photos", "--checkpoint", result.best_checkpoint, "--photos", "coins,china",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for word in ("coins", "china", "mean", "bicubic_psnr", "model_psnr", "gain_db"):
        assert word in printed
    assert Image.open(out / "china_x2.png").width == 4 * 256 + 3 * 4  # four zoomed panels
    assert main(["superres", "eval-photos", "--checkpoint", result.best_checkpoint, "--photos", "lena"]) == 2


def test_upscale_route_answers_a_png_twice_the_size(superres_run):
    result, _ = superres_run
    image = np.random.default_rng(4).integers(0, 256, (21, 35, 3), dtype=np.uint8)
    with served(result.best_checkpoint, "superres") as base:
        url = f"{base}/v1/superres"
        png = {"content": png_bytes(image), "headers": {"content-type": "image/png"}, "timeout": 60}
        upscaled = httpx.post(f"{url}/upscale", **png)
        assert upscaled.status_code == 200 and upscaled.headers["content-type"] == "image/png", upscaled.text
        local = answer_image(predict(load_model(result.best_checkpoint, "superres"), [image])[0])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(upscaled.content))), local)
        assert local.shape == (42, 70, 3)
        answer = httpx.post(f"{url}/predict", **png).json()["predictions"][0]
        assert (answer["width"], answer["height"], answer["scale"]) == (70, 42, 2)
        bad_query = httpx.post(f"{url}/upscale", params={"scale": "3"}, **png)
        assert bad_query.status_code == 422 and "no query parameters" in bad_query.json()["detail"]
        assert httpx.post(f"{url}/upscale", content=b"not an image",
                          headers={"content-type": "image/png"}).status_code == 400
