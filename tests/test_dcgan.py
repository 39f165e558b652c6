"""The dcgan task: alternating player updates (alone and under DDP), the SWD metric, and one short
two-worker Ray run through the samples verb and the Serve route."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port, png_bytes, saved_checkpoint, served

from raycv.cli import main
from raycv.data import procedural
from raycv.data.images import to_model_input
from raycv.synth import synthesize
from raycv.models.dcgan import DCGAN, NOISE_DIM
from raycv.tasks import get_task
from raycv.tasks.dcgan import class_census, latent_for, sliced_wasserstein

TASK = get_task("dcgan")


def shapes(count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    images = [procedural.render_shape_image(rng, int(rng.integers(len(procedural.SHAPE_CLASSES))), 64)
              for _ in range(count)]
    return to_model_input(torch.from_numpy(np.stack(images)))


def test_plain_backgrounds_are_one_flat_colour_around_the_shape():
    rng = np.random.default_rng(0)
    for label in range(len(procedural.SHAPE_CLASSES)):
        plain = procedural.render_shape_image(rng, label, 64, "plain").astype(int)
        textured = procedural.render_shape_image(rng, label, 64).astype(int)
        border = [plain[0], plain[-1], plain[:, 0], plain[:, -1]]
        # The shape may touch the frame (its centre keeps 90 % of its radius inside): most border pixels are
        # the background's one colour, and the shape is there in another.
        background = np.median(np.concatenate(border), axis=0)
        share = np.mean([(np.abs(edge - background).max(axis=-1) == 0).mean() for edge in border])
        assert share > 0.6, (procedural.SHAPE_CLASSES[label], share)
        assert (np.abs(plain - background).max(axis=-1) > 20).mean() > 0.02  # a shape is drawn
        assert len(np.unique(textured[0].reshape(-1, 3), axis=0)) > 8  # texture, clutter and noise


def changed_players(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[str, set[str]]:
    """One training step; which player's loss it was and whose parameters moved."""
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    outputs = model(images, labels)
    optimizer.zero_grad(set_to_none=True)
    outputs["loss"].backward()
    optimizer.step()
    moved = {name.removeprefix("module.").split(".")[0] for name, value in model.named_parameters()
             if not torch.equal(before[name], value)}
    return outputs["player"], moved


def test_turns_alternate_and_each_step_moves_only_its_player():
    torch.manual_seed(0)
    model = DCGAN(0.125).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.999))  # momentum would carry
    images = shapes(8, 0)
    steps = [changed_players(model, optimizer, images) for _ in range(4)]
    assert steps == [("discriminator", {"discriminator"}), ("generator", {"generator"})] * 2
    with torch.no_grad():
        samples = model.eval()(torch.randn(3, NOISE_DIM, 1, 1))
    assert samples.shape == (3, 3, 64, 64) and samples.min() >= 0 and samples.max() <= 1


def test_a_conditional_gan_learns_to_draw_the_class_it_is_given():
    """Two classes told apart only by colour (red and blue noise): after 600 alternating steps the generator
    draws redder pictures for class 0 than for class 1 from the same noise, which it can only learn if the
    class reaches the generator and the discriminator judges image and class together. Measured: red minus
    blue 0.73 for class 0 and -0.21 for class 1 (an unconditional generator draws one mix for both)."""
    torch.manual_seed(0)
    model = DCGAN(0.125, classes=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.5, 0.999), weight_decay=0)
    for step in range(600):
        labels = torch.randint(2, (16,))
        images = torch.rand(16, 3, 64, 64) * 0.2
        images[:, 0] += 0.8 * (labels == 0).float()[:, None, None]
        images[:, 2] += 0.8 * (labels == 1).float()[:, None, None]
        player, moved = changed_players(model, optimizer, images, labels)
        assert moved == {player}, (step, player, moved)
    latent = latent_for(list(range(16)), classes=2)  # seeds 0..15: classes 0, 1, 0, 1, ...
    with torch.no_grad():
        colours = model.eval()(latent).mean(dim=(2, 3))
    red_minus_blue = colours[:, 0] - colours[:, 2]
    assert red_minus_blue[0::2].min() > red_minus_blue[1::2].max() + 0.4, red_minus_blue
    with pytest.raises(ValueError, match="latent of 100 channels: this generator takes 101"):
        model(torch.randn(2, NOISE_DIM, 1, 1))
    with pytest.raises(ValueError, match="trains on images with their classes"):
        model.train()(images)


def test_under_ddp_the_resting_player_keeps_no_gradient():
    """find_unused_parameters (the task's ddp_options) leaves the resting player's gradients None, not
    zero, so AdamW's momentum cannot move it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(DCGAN(0.125).train(), **TASK.ddp_options)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
        images = shapes(8, 1)
        steps = [changed_players(model, optimizer, images) for _ in range(3)]
    finally:
        dist.destroy_process_group()
    assert steps == [("discriminator", {"discriminator"}), ("generator", {"generator"}),
                     ("discriminator", {"discriminator"})]


def test_sliced_wasserstein_is_small_between_real_sets_and_large_to_noise_or_grey():
    """Measured with these seeds: real-real 71, real-noise 303, real-grey 758, real against each image's
    flat mean colour 163: the metric sees colours and, beyond them, structure."""
    real, other_real = shapes(256, 2), shapes(256, 3)
    between_real = sliced_wasserstein(real, other_real)
    to_noise = sliced_wasserstein(real, torch.rand_like(real))
    to_grey = sliced_wasserstein(real, torch.full_like(real, 0.5))
    to_flat = sliced_wasserstein(real, real.mean(dim=(2, 3), keepdim=True).expand_as(real))
    assert between_real < 0.35 * to_noise and between_real < 0.15 * to_grey and between_real < 0.7 * to_flat, \
        (between_real, to_noise, to_grey, to_flat)


@pytest.fixture(scope="module")
def dcgan_run(ray_session, tmp_path_factory):
    """One epoch on two DDP workers over 128 images: every path, not quality."""
    from raycv.train import fit

    folder = tmp_path_factory.mktemp("dcgan")
    data = str(folder / "data")
    synthesize(TASK, data, {"train": 128, "val": 32}, seed=3)
    cfg = TASK.default_config().replace(epochs=1, batch_size=16, workers=2, cpus_per_worker=1, width=0.125,
                                        storage=str(folder / "runs"), name="tiny")
    return fit(TASK, cfg, data), folder


def test_fit_reports_swd_beside_its_floor_and_samples_draws_the_grid(dcgan_run, capsys):
    result, folder = dcgan_run
    (row,) = result.history
    assert row["workers"] == 2 and np.isfinite(row["train_loss"])
    assert 0 < row["val_swd_real"] < row["val_swd"]  # an untrained generator is far from the real floor
    grid = folder / "grid.png"
    assert main(["dcgan", "samples", "--checkpoint", result.best_checkpoint, "--out", str(grid), "--count", "6",
                 "--seed", "4"]) == 0
    assert "6 samples (seeds 4..9)" in capsys.readouterr().out
    assert Image.open(grid).size[0] > 3 * 64  # six 64-px samples side by side in rows
    assert main(["dcgan", "samples", "--checkpoint", result.best_checkpoint, "--out", str(grid), "--count", "0"]) == 2
    assert "invalid --count 0" in capsys.readouterr().err


def test_class_census_counts_confident_samples_and_the_distance_from_even_shares():
    classes = ["circle", "square", "star", "ring"]
    even = class_census(["circle", "square", "star", "ring"] * 5, [0.95] * 15 + [0.5] * 5, classes)
    assert even["confident"] == 0.75 and even["min_share"] == 0.25 and even["distance_from_uniform"] == 0
    collapsed = class_census(["star"] * 20, [0.99] * 20, classes)
    assert collapsed["min_share"] == 0 and collapsed["distance_from_uniform"] == pytest.approx(0.75)
    assert collapsed["shares"] == {"circle": 0, "square": 0, "star": 1.0, "ring": 0}


def test_centred_shapes_sit_in_the_middle_at_one_size():
    from raycv.errors import RaycvError

    rng = np.random.default_rng(0)
    for label in range(len(procedural.SHAPE_CLASSES)):
        image = procedural.render_shape_image(rng, label, 64, "plain", "centred").astype(int)
        drawn = np.abs(image - image[0, 0]).max(axis=-1) > 20
        rows, columns = np.nonzero(drawn)
        # Every class's outline fits the circle of radius CENTRED_RADIUS x 64 = 22.4 px around the middle, and
        # reaches out near it (one size: the random layout's radii run from 12.8 to 27.2 px).
        reach = np.hypot(rows + 0.5 - 32, columns + 0.5 - 32).max()
        assert 17 <= reach <= 23.5, (procedural.SHAPE_CLASSES[label], reach)
    with pytest.raises(RaycvError, match="invalid layout='left': expected anywhere or centred"):
        procedural.render_shape_image(rng, 0, 64, "plain", "left")


def test_samples_a_classifier_calls_no_shape_count_for_no_shape():
    census = class_census(["circle", "none", "square", "none"], [0.95, 0.99, 0.95, 0.99], ["circle", "square", "none"])
    assert census["confident"] == 0.5 and census["min_share"] == 0.25 and census["shares"]["none"] == 0.5
    assert census["distance_from_uniform"] == pytest.approx(0.5)  # half the mass is on no shape at all


def test_classify_sets_with_a_no_shape_class_draw_blobs_at_the_asked_share():
    from raycv.errors import RaycvError

    classify = get_task("classify")
    params = {**classify.synth_defaults, "image_size": 64, "background": "plain", "no_shape_share": 0.25}
    assert classify.dataset_meta(params)["classes"] == [*procedural.SHAPE_CLASSES, "none"]
    rng = np.random.default_rng(0)
    labels = [classify.synthesize_sample(rng, params)["label"] for _ in range(400)]
    assert 0.18 < np.mean(np.array(labels) == procedural.NO_SHAPE_LABEL) < 0.32
    assert set(labels) == set(range(len(procedural.SHAPE_CLASSES) + 1))
    blobs = procedural.render_shape_image(np.random.default_rng(1), procedural.NO_SHAPE_LABEL, 64, "plain")
    assert (np.abs(blobs.astype(int) - blobs[0, 0].astype(int)).max(axis=-1) > 20).mean() > 0.01  # blobs drawn
    for bad in (1.0, "some"):
        with pytest.raises(RaycvError, match=f"invalid no_shape_share={bad!r}"):
            classify.dataset_meta({**params, "no_shape_share": bad})


def test_score_classifies_samples_with_a_shape_classifier(dcgan_run, tmp_path, capsys):
    result, _ = dcgan_run
    classify = get_task("classify")
    meta = classify.dataset_meta({**classify.synth_defaults, "image_size": 64})
    classifier = saved_checkpoint(classify, classify.default_config().replace(width=0.25, label_smoothing=0.0),
                                  meta, str(tmp_path / "shapes"))
    out = tmp_path / "score.json"
    assert main(["dcgan", "score", "--checkpoint", result.best_checkpoint, "--classifier", classifier,
                 "--count", "30", "--out", str(out)]) == 0
    census = json.loads(out.read_text())
    assert census["samples"] == 30 and sum(census["shares"].values()) == pytest.approx(1)
    assert set(census["shares"]) == set(procedural.SHAPE_CLASSES) and 0 <= census["confident"] <= 1
    assert "30 samples:" in capsys.readouterr().out
    assert main(["dcgan", "score", "--checkpoint", result.best_checkpoint, "--classifier",
                 result.best_checkpoint]) == 2
    assert "classify" in capsys.readouterr().err  # a dcgan checkpoint is not a classifier
    smoothed = saved_checkpoint(classify, classify.default_config().replace(width=0.25), meta,
                                str(tmp_path / "smoothed"))
    assert main(["dcgan", "score", "--checkpoint", result.best_checkpoint, "--classifier", smoothed]) == 2
    assert "--label-smoothing 0.1" in capsys.readouterr().err
    plain_meta = classify.dataset_meta({**classify.synth_defaults, "image_size": 64, "background": "plain"})
    plain = saved_checkpoint(classify, classify.default_config().replace(width=0.25, label_smoothing=0.0),
                             plain_meta, str(tmp_path / "plain"))
    assert main(["dcgan", "score", "--checkpoint", result.best_checkpoint, "--classifier", plain]) == 2
    assert "textured backgrounds and the classifier" in capsys.readouterr().err


def test_a_conditional_checkpoint_samples_and_scores_each_class_in_turn(tmp_path, capsys):
    """sample n draws class n mod 10: the census says how many were confidently the class asked for."""
    from raycv.errors import RaycvError

    params = {**TASK.synth_defaults, "background": "plain"}
    cfg = TASK.default_config().replace(width=0.125, extra={"conditional": "classes"})
    meta = TASK.training_meta(TASK.dataset_meta(params), cfg)
    assert meta["generator_classes"] == len(procedural.SHAPE_CLASSES)
    generator = saved_checkpoint(TASK, cfg, meta, str(tmp_path / "gan"))
    assert TASK.preprocess([np.zeros((8, 8, 3), np.uint8)], meta).shape == (1, NOISE_DIM + 1, 1, 1)
    classify = get_task("classify")
    classifier = saved_checkpoint(classify, classify.default_config().replace(width=0.25, label_smoothing=0.0),
                                  classify.dataset_meta({**classify.synth_defaults, "image_size": 64, **params}),
                                  str(tmp_path / "shapes"))
    out = tmp_path / "score.json"
    assert main(["dcgan", "score", "--checkpoint", generator, "--classifier", classifier, "--count", "20",
                 "--out", str(out)]) == 0
    census = json.loads(out.read_text())
    assert 0 <= census["as_asked"] <= census["confident"]  # confidently the asked class is confident
    assert "confidently the class asked for" in capsys.readouterr().out
    grid = str(tmp_path / "grid.png")
    assert main(["dcgan", "samples", "--checkpoint", generator, "--out", grid, "--count", "10"]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(photos / "a.png")
    with pytest.raises(RaycvError, match="--conditional classes needs procedural shapes"):
        TASK.training_meta(TASK.dataset_meta({**TASK.synth_defaults, "images_dir": str(photos)}), cfg)
    with pytest.raises(RaycvError, match="invalid conditional='yes': expected off or classes"):
        TASK.card.check_options({"conditional": "yes"})


def test_predict_route_answers_the_same_sample_for_the_same_image(dcgan_run):
    result, _ = dcgan_run
    png = {"headers": {"content-type": "image/png"}, "timeout": 60}
    seed_image = png_bytes(np.full((8, 8, 3), 7, dtype=np.uint8))
    with served(result.best_checkpoint, "dcgan") as base:
        url = f"{base}/v1/dcgan/predict"
        answers = [httpx.post(url, content=seed_image, **png) for _ in range(2)]
        other = httpx.post(url, content=png_bytes(np.zeros((8, 8, 3), np.uint8)), **png)
        bad = httpx.post(url, content=b"not an image", **png)
    assert [answer.status_code for answer in (*answers, other)] == [200, 200, 200]
    samples = [np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["predictions"][0]["image_png"]))))
               for answer in (*answers, other)]
    assert samples[0].shape == (64, 64, 3)
    assert np.array_equal(samples[0], samples[1]) and not np.array_equal(samples[0], samples[2])
    assert bad.status_code == 400, bad.text
