"""The inpaint task: holes and masks, the loss and the Telea baseline, the predict path with the mask in
the alpha channel, and the fill verb, eval-photos and the Serve route on an in-process checkpoint."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import png_bytes, saved_checkpoint, served, train_steps

from raycv.checkpoint import load_model
from raycv.cli import main
from raycv.compress import check_stages
from raycv.data import quality
from raycv.data.images import encode_png
from raycv.data.photos import PHOTO_NAMES
from raycv.errors import RaycvError
from raycv.inference import predict
from raycv.tasks import get_task
from raycv.tasks.inpaint import (baseline_fills, biharmonic_fill, check_mask, hole_log_mse, hole_masks, moved_holes,
                                 parse_hole, random_masks, score_photos, smooth_fill, telea, with_hole)
from raycv.tasks.routes import answer_image

TASK = get_task("inpaint")
SMALL = {**TASK.synth_defaults, "image_size": 64, "hole_size": 21}  # the book's 42-in-128, halved


def rows(count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    samples = [TASK.synthesize_sample(np.random.default_rng([seed, index]), SMALL) for index in range(count)]
    stored = {"image": np.array([s["image"] for s in samples], dtype=object),
              "hole": np.stack([s["hole"] for s in samples])}
    return {key: torch.from_numpy(value) for key, value in TASK.decode(stored, TASK.dataset_meta(SMALL)).items()}


def test_rows_are_deterministic_and_hold_the_hole_inside_the_image():
    first = TASK.synthesize_sample(np.random.default_rng([1, 2]), SMALL)
    again = TASK.synthesize_sample(np.random.default_rng([1, 2]), SMALL)
    assert first["image"] == again["image"] and np.array_equal(first["hole"], again["hole"])
    x, y, side = first["hole"]
    assert side == 21 and 0 <= x <= 64 - 21 and 0 <= y <= 64 - 21
    with pytest.raises(RaycvError, match="multiple of 32"):
        TASK.dataset_meta({**SMALL, "image_size": 100})
    with pytest.raises(RaycvError, match="hole_size=64"):
        TASK.dataset_meta({**SMALL, "hole_size": 64})


def test_hole_masks_and_moved_holes():
    holes = torch.tensor([[0, 0, 3], [5, 2, 4]])
    masks = hole_masks(holes, 10)
    assert masks.shape == (2, 1, 10, 10) and masks.sum(dim=(1, 2, 3)).tolist() == [9.0, 16.0]
    assert masks[1, 0, 2:6, 5:9].all() and masks[1, 0, 6, 5] == 0
    moved = moved_holes(torch.tensor([[0, 0, 21]] * 500), 64)
    assert (moved[:, 2] == 21).all() and moved[:, :2].min() == 0 and moved[:, :2].max() == 64 - 21
    assert len(set(map(tuple, moved[:, :2].tolist()))) > 300


def test_training_masks_vary_in_shape_and_size():
    masks = random_masks(300, 64)
    assert masks.shape == (300, 1, 64, 64) and set(masks.unique().tolist()) == {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2, 3))
    assert coverage.min() > 0 and coverage.max() < 0.5 and coverage.quantile(0.9) > 3 * coverage.quantile(0.1)
    # How much of its bounding box each hole fills: 1 for rectangles, pi/4 for ellipses, less for strokes.
    fills = []
    for mask in masks[:, 0].bool():
        rows, columns = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
        fills.append(float(mask.sum() / box))
    fills = np.array(fills)
    assert (fills == 1).mean() > 0.2 and ((fills > 0.65) & (fills < 0.9)).mean() > 0.15 and (fills < 0.6).mean() > 0.15
    with pytest.raises(RaycvError, match="invalid masks='circle': expected varied or square"):
        TASK.card.check_options({"masks": "circle"})


def test_training_crops_of_named_photos_leave_the_others_to_eval_photos():
    params = {**SMALL, "photos": "brick,grass"}
    meta = TASK.dataset_meta(params)
    assert meta["training_photos"] == ["brick", "grass"] and meta["source"] == "photos brick,grass"
    first = TASK.synthesize_sample(np.random.default_rng([3, 1]), params)
    assert first["image"] == TASK.synthesize_sample(np.random.default_rng([3, 1]), params)["image"]
    assert first["image"] != TASK.synthesize_sample(np.random.default_rng([3, 1]), SMALL)["image"]  # not dead leaves
    with pytest.raises(RaycvError, match="invalid photos='brick,lena': expected comma-separated names of astronaut"):
        TASK.dataset_meta({**SMALL, "photos": "brick,lena"})
    with pytest.raises(RaycvError, match="images_dir or photos, not both"):
        TASK.dataset_meta({**SMALL, "photos": "brick", "images_dir": "."})

    class Loaded:
        dataset_meta = {"image_size": [64, 64], "hole_size": 21,
                        "training_photos": [name for name in PHOTO_NAMES if name not in ("coins", "moon")]}

    def unchanged(loaded, images):  # the pixels back as they came: what is checked is which photos are scored
        return [{"image_png": base64.b64encode(encode_png(image[..., :3])).decode()} for image in images]

    rows = score_photos(Loaded(), unchanged)
    assert [row["image"] for row in rows] == ["coins", "moon", "mean"]


def test_masks_from_users_are_validated():
    image = np.zeros((30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), dtype=np.uint8)
    with pytest.raises(RaycvError, match="marks no pixel"):
        check_mask(mask, image.shape)
    with pytest.raises(RaycvError, match="does not match"):
        check_mask(mask[:, :39], image.shape)
    with pytest.raises(RaycvError, match="whole image"):
        check_mask(mask + 255, image.shape)
    mask[5:9, 10:20] = 255
    assert check_mask(mask, image.shape).sum() == 40
    assert parse_hole("10,5,10,4", image.shape).sum() == 40
    with pytest.raises(RaycvError, match="X,Y,WIDTH,HEIGHT"):
        parse_hole("10,5,10", image.shape)
    with pytest.raises(RaycvError, match="not inside the 40x30 image"):
        parse_hole("35,5,10,4", image.shape)


def test_smooth_prior_keeps_known_pixels_and_continues_smooth_images_into_the_hole():
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    ramp = torch.stack([x, y, 0.5 * x + 0.25 * y])[None]  # harmonic: the membrane fill is the ramp itself
    mask = hole_masks(torch.tensor([[10, 20, 21]]), 64)
    filled = smooth_fill(ramp * (1 - mask), mask)
    assert torch.equal(filled * (1 - mask), ramp * (1 - mask))
    assert (filled - ramp).abs().max() < 0.01
    flat = torch.full((2, 3, 45, 70), 0.3)  # odd sizes, a hole on the border
    border = torch.zeros(2, 1, 45, 70)
    border[:, :, :20, 50:] = 1
    assert torch.allclose(smooth_fill(flat * (1 - border), border), flat, atol=1e-6)


def test_biharmonic_fill_continues_curvature_that_the_harmonic_fill_flattens():
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    bowl = ((x - 0.4) ** 2 + 0.5 * (y - 0.6) ** 2)[None, None].repeat(2, 3, 1, 1)  # its Laplacian is constant
    mask = hole_masks(torch.tensor([[20, 15, 21], [5, 30, 25]]), 64)
    biharmonic, harmonic = biharmonic_fill(bowl * (1 - mask), mask), smooth_fill(bowl * (1 - mask), mask)
    assert torch.equal(biharmonic * (1 - mask), bowl * (1 - mask))
    assert (biharmonic - bowl).abs().max() < 2e-3 < 0.01 < (harmonic - bowl).abs().max()
    assert torch.equal(baseline_fills(bowl * (1 - mask), mask)[0], harmonic)
    assert torch.allclose(baseline_fills(bowl * (1 - mask), mask)[1], (biharmonic + harmonic) / 2)


def test_the_loss_is_the_mean_psnr_in_the_hole_up_to_a_factor():
    target, mask = torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8)
    mask[0, :, :2, :2], mask[1, :, 4:, 4:] = 1, 1
    result = target + torch.tensor([0.1, 0.1 ** 1.5]).view(2, 1, 1, 1)  # 20 and 30 dB inside the holes
    psnr = -10 / np.log(10) * float(hole_log_mse(result, target, mask))
    assert psnr == pytest.approx(25, abs=0.03)  # the floor (50 dB) costs 0.02 dB here


def test_an_untrained_filler_is_the_prior_and_training_improves_on_it():
    torch.manual_seed(0)
    batch = rows(8)
    cfg = TASK.default_config().replace(width=0.25)
    model = TASK.build_model(cfg, TASK.dataset_meta(SMALL))
    images = batch["image"].permute(0, 3, 1, 2).float() / 255
    masks = hole_masks(batch["hole"], 64)
    with torch.no_grad():
        untrained = model.eval()(torch.cat([images, masks], dim=1))[:, :3]
    assert torch.allclose(untrained, baseline_fills(images * (1 - masks), masks)[1].clamp(0, 1) * masks
                          + images * (1 - masks), atol=1e-6)
    losses = train_steps(TASK, model.train(), batch, cfg, 25, lr=2e-3)
    assert np.mean(losses[-3:]) < losses[0] - 0.15, losses  # 0.15 in the log: 0.65 dB


def test_evaluate_scores_the_model_and_telea_inside_the_hole():
    batch = rows(4)
    meta = TASK.dataset_meta(SMALL)
    model = TASK.build_model(TASK.default_config().replace(width=0.25), meta).eval()
    with torch.no_grad():
        metrics = TASK.evaluate(model, [batch], meta)
    images = batch["image"].numpy()
    holes = hole_masks(batch["hole"], 64)[:, 0].bool().numpy()
    expected = np.mean([float(quality.masked_psnr(
        torch.from_numpy(telea(image, hole)).permute(2, 0, 1)[None] / 255,
        torch.from_numpy(image).permute(2, 0, 1)[None] / 255, torch.from_numpy(hole)[None, None].float()))
        for image, hole in zip(images, holes, strict=False)])
    assert metrics["psnr_hole_telea"] == pytest.approx(expected, abs=1e-3)
    assert 5 < metrics["psnr_hole"] < 60 and metrics["psnr_gain"] == pytest.approx(
        metrics["psnr_hole"] - metrics["psnr_hole_telea"])
    assert metrics["psnr_hole"] == pytest.approx(metrics["psnr_hole_prior"], abs=1e-3)  # untrained: the prior
    assert metrics["psnr_hole_harmonic"] != pytest.approx(metrics["psnr_hole_prior"], abs=1e-2)


def test_predict_fills_only_the_transparent_pixels_at_any_size():
    meta = TASK.dataset_meta(SMALL)
    loaded = type("Loaded", (), {"task": TASK, "model": TASK.build_model(TASK.default_config().replace(width=0.25),
                                                                          meta).eval(), "dataset_meta": meta})()
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    hole = np.zeros((50, 70), dtype=bool)
    hole[10:30, 20:45] = True
    filled, untouched = predict(loaded, [with_hole(image, hole), np.dstack([image, np.full((50, 70), 255, np.uint8)])])
    result = answer_image(filled)
    assert result.shape == (50, 70, 3) and filled["hole_pixels"] == 500
    assert np.array_equal(result[~hole], image[~hole]) and not np.array_equal(result[hole], image[hole])
    assert untouched["hole_pixels"] == 0 and np.array_equal(answer_image(untouched), image)


@pytest.fixture(scope="module")
def inpaint_run(tmp_path_factory):
    """An untrained checkpoint written in-process: the verbs and the route need one, not a fit (the
    UNet goes through Ray Train in the segment tests)."""
    folder = tmp_path_factory.mktemp("inpaint")
    torch.manual_seed(0)
    cfg = TASK.default_config().replace(width=0.25)
    return saved_checkpoint(TASK, cfg, TASK.dataset_meta(SMALL), str(folder / "checkpoint")), folder


def test_fill_and_eval_photos_verbs(inpaint_run, capsys):
    checkpoint, folder = inpaint_run
    image = np.random.default_rng(5).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    (folder / "in.png").write_bytes(png_bytes(image))
    mask = np.zeros((45, 61), dtype=np.uint8)
    mask[3:13, 4:24] = 255
    (folder / "mask.png").write_bytes(png_bytes(mask))
    (folder / "small_mask.png").write_bytes(png_bytes(mask[:40]))
    base = ["inpaint", "fill", "--checkpoint", checkpoint, "--image", str(folder / "in.png")]
    assert main([*base, "--mask", str(folder / "mask.png"), "--out", str(folder / "a.png")]) == 0
    assert "filled 200 pixels" in capsys.readouterr().out
    assert main([*base, "--hole", "4,3,20,10", "--out", str(folder / "b.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(folder / "a.png")), np.asarray(Image.open(folder / "b.png")))
    assert main([*base, "--mask", str(folder / "small_mask.png"), "--out", str(folder / "c.png")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["inpaint", "eval-photos", "--checkpoint", checkpoint, "--photos", "coins",
                 "--out", str(folder / "photos")]) == 0
    printed = capsys.readouterr().out
    assert ("coins" in printed and "telea_psnr_hole" in printed and "prior_psnr_hole" in printed
            and (folder / "photos" / "coins_inpaint.png").exists())


def test_fill_route_takes_the_mask_as_alpha(ray_session, inpaint_run):
    checkpoint, _ = inpaint_run
    image = np.random.default_rng(6).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    hole = np.zeros((40, 52), dtype=bool)
    hole[5:20, 10:30] = True
    with served(checkpoint, "inpaint") as base:
        url = f"{base}/v1/inpaint"
        headers = {"content-type": "image/png"}
        filled = httpx.post(f"{url}/fill", content=png_bytes(with_hole(image, hole)), headers=headers, timeout=60)
        assert filled.status_code == 200 and filled.headers["content-type"] == "image/png", filled.text
        local = answer_image(predict(load_model(checkpoint, "inpaint"), [with_hole(image, hole)])[0])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(filled.content))), local)
        no_alpha = httpx.post(f"{url}/fill", content=png_bytes(image), headers=headers, timeout=60)
        assert no_alpha.status_code == 422 and "no transparent pixels" in no_alpha.json()["detail"]
        with_query = httpx.post(f"{url}/fill", params={"hole": "1,1,5,5"}, content=png_bytes(image), headers=headers)
        assert with_query.status_code == 422 and "alpha 0" in with_query.json()["detail"]
        answer = httpx.post(f"{url}/predict", content=png_bytes(with_hole(image, hole)), headers=headers,
                            timeout=60).json()["predictions"][0]
        assert answer["hole_pixels"] == 300 and (answer["width"], answer["height"]) == (52, 40)


def test_network_compression_runs_the_stages_the_filler_can_go_through(tmp_path, capsys):
    check_stages(TASK.card, ("sparse", "channels"))
    with pytest.raises(RaycvError, match="inpaint cannot run the int8, export stages: .*conjugate gradients"):
        check_stages(TASK.card, ("sparse", "int8", "export"))
    assert main(["inpaint", "compress", "--checkpoint", str(tmp_path / "absent"), "--data", str(tmp_path / "absent"),
                 "--out", str(tmp_path / "out"), "--stages", "export"]) == 2
    assert capsys.readouterr().err.strip().endswith("run --stages sparse,channels")


def test_a_checkpoint_of_an_older_filler_is_refused_in_one_line(tmp_path):
    import torch.nn as nn

    meta = TASK.dataset_meta(SMALL)
    cfg = TASK.default_config().replace(width=0.25)
    model = TASK.build_model(cfg, meta)
    # The filler before the biharmonic gate: four input channels (RGB and mask), three outputs.
    model.net.stem[0] = nn.Conv2d(4, model.net.stem[0].out_channels, 7, stride=2, padding=3, bias=False)
    checkpoint = saved_checkpoint(TASK, cfg, meta, str(tmp_path / "old"), model)
    with pytest.raises(RaycvError, match=r"does not fit the inpaint model .*net\.stem\.0\.weight.* train it again"):
        load_model(checkpoint, "inpaint")
