"""compress_ae: the range coder, the quantized latent, the AE+GAN's one-backward update, real bits per
pixel on the predict path, and one short Ray run through train, eval-photos and the Serve route."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import png_bytes, saved_checkpoint, served, train_steps

from raycv.checkpoint import load_model
from raycv.cli import main
from raycv.data.images import decode_image, to_model_input
from raycv.synth import synthesize
from raycv.errors import RaycvError
from raycv.inference import predict
from raycv.models.autoencoder import AdversarialAutoencoder, QuantizedAutoencoder, adversarial_terms
from raycv.models.codec import SYMBOL_BOUND, FactorizedPriorCodec
from raycv.models.common import grey_images
from raycv.tasks import get_task
from raycv.compress import compress_checkpoint
from raycv.tasks.compress_ae import against_jpeg, decode_symbols, decompress, encode_symbols

TASK = get_task("compress_ae")
SMALL = {**TASK.synth_defaults, "image_size": 32}
TINY = dict(width=0.25)


def batch_of(count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rows = [TASK.synthesize_sample(np.random.default_rng([seed, index]), SMALL) for index in range(count)]
    decoded = TASK.decode({"image": np.array([row["image"] for row in rows], dtype=object)}, TASK.dataset_meta(SMALL))
    return {"image": torch.from_numpy(decoded["image"])}


def test_range_coding_round_trips_and_spends_bits_by_probability():
    rng = np.random.default_rng(0)
    peaked = np.array([[0.02, 0.08, 0.8, 0.08, 0.02]] * 4)
    symbols = rng.choice(5, size=(4, 6, 9), p=peaked[0]) - 2
    code = encode_symbols(symbols, peaked)
    decoded, grey = decode_symbols(code, peaked)
    assert np.array_equal(decoded, symbols) and not grey
    grey_code = encode_symbols(symbols, peaked, grey=True)  # the flag costs no bits beyond the header's byte
    assert len(grey_code) == len(code) and decode_symbols(grey_code, peaked)[1]
    entropy = -(peaked[0] * np.log2(peaked[0])).sum() * symbols.size
    assert 8 * len(code) < entropy + 4 * 32 + 64  # within a few words of the entropy, plus the header
    uniform = np.full((4, 5), 0.2)
    assert len(encode_symbols(symbols, uniform)) > len(code)


def test_the_latent_is_integer_symbols_and_the_histogram_follows_them():
    torch.manual_seed(0)
    model = QuantizedAutoencoder(width=0.25, latent_channels=4, levels=5)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    outputs = model(images)
    symbols = outputs["symbols"]
    assert symbols.shape == (2, 4, 4, 4) and outputs["reconstruction"].shape == images.shape
    assert torch.equal(symbols, symbols.round()) and symbols.abs().max() <= 2
    outputs["reconstruction"].mean().backward()
    assert model.encoder.head.weight.grad.abs().sum() > 0  # the gradient goes straight through rounding
    assert not torch.allclose(model.probabilities(), torch.full((4, 5), 0.2))  # counted in training
    with pytest.raises(ValueError, match="odd"):
        QuantizedAutoencoder(levels=4)


def test_one_backward_trains_each_gan_player_only_on_its_own_loss():
    torch.manual_seed(0)
    model = AdversarialAutoencoder(width=0.25, latent_channels=4)
    images = torch.rand(2, 3, 32, 32)
    reconstruction = model.autoencoder(images)["reconstruction"]
    terms = adversarial_terms(model.discriminator, images, reconstruction)
    gradients = {}
    for name in ("discriminator", "adversarial", "feature_matching"):
        model.zero_grad()
        terms[name].backward(retain_graph=True)
        gradients[name] = (sum(float(p.grad.abs().sum()) for p in model.discriminator.parameters()
                               if p.grad is not None),
                           sum(float(p.grad.abs().sum()) for p in model.autoencoder.parameters() if p.grad is not None))
    assert gradients["discriminator"][0] > 0 and gradients["discriminator"][1] == 0
    for generator_term in ("adversarial", "feature_matching"):
        assert gradients[generator_term][0] == 0 and gradients[generator_term][1] > 0


@pytest.mark.parametrize("model_name", ["ae", "aegan"])
def test_training_steps_lower_the_reconstruction_loss(model_name):
    torch.manual_seed(0)
    batch = batch_of(16)
    cfg = TASK.default_config().replace(model=model_name, **TINY)
    model = TASK.build_model(cfg, TASK.dataset_meta(SMALL))
    meta = TASK.dataset_meta(SMALL)
    model.eval()
    with torch.no_grad():
        before = TASK.evaluate(model, [batch], meta)
    model.train()
    train_steps(TASK, model, batch, cfg, 60, lr=3e-3)
    model.eval()
    with torch.no_grad():
        after = TASK.evaluate(model, [batch], meta)
    assert after["loss"] < 0.85 * before["loss"] and after["psnr"] > before["psnr"] + 1, (before, after)
    # 16 channels at 1/8 resolution: a quarter symbol per pixel, at most log2(5) bits each, plus the header
    assert 0 < after["bpp"] < 0.25 * np.log2(5) + 0.1 and after["latent_per_pixel"] == 0.25


def test_factorized_codec_trains_for_rate_and_distortion_and_its_bit_estimate_is_the_coded_length():
    torch.manual_seed(0)
    meta = TASK.dataset_meta(SMALL)
    cfg = TASK.default_config().replace(model="factorized", **TINY)
    model = TASK.build_model(cfg, meta)
    assert isinstance(model, FactorizedPriorCodec)
    batch = batch_of(16)
    model.eval()
    with torch.no_grad():
        before = TASK.evaluate(model, [batch], meta)
    model.train()
    outputs = model(to_model_input(batch["image"]))
    outputs["symbols"].sum().backward()  # rounded forward, the gradient straight through to the encoder
    assert torch.equal(outputs["symbols"], outputs["symbols"].round()) and model.encoder[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    losses = train_steps(TASK, model, batch, cfg, 60, lr=3e-3)
    model.eval()
    with torch.no_grad():
        after = TASK.evaluate(model, [batch], meta)
        outputs = model(to_model_input(batch["image"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert after["psnr"] > before["psnr"] + 3 and after["bpp"] < before["bpp"], (before, after)
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (48, 2 * SYMBOL_BOUND + 1) and np.allclose(probabilities.sum(axis=1), 1)
    coded = sum(8 * len(encode_symbols(symbols, probabilities)) for symbols in outputs["symbols"].numpy())
    estimated = float(outputs["bits"].sum())
    # The range coder spends the prior's estimate, plus at most a 32-bit word and the 4-byte header per image.
    assert estimated <= coded <= estimated * 1.02 + 16 * (32 + 32), (coded, estimated)

    # Refinement when coding: a few steps on each image's own latent lower its coded loss (rounded latent,
    # real rate), never raise it, and the refined symbols decode through the same decoder and coder.
    images = to_model_input(batch["image"])
    grey = grey_images(images)
    with torch.no_grad():
        encoder_loss = model.coded_loss(images, grey, model.encoder(images))
    model.refine_steps = 15
    with torch.inference_mode():
        refined = model(images)
        refined_loss = model.coded_loss(images, grey, refined["symbols"])
    assert (refined_loss <= encoder_loss + 1e-5).all() and refined_loss.mean() < 0.97 * encoder_loss.mean(), \
        (encoder_loss, refined_loss)
    symbols = refined["symbols"][0].numpy()
    assert np.array_equal(decode_symbols(encode_symbols(symbols, probabilities), probabilities)[0], symbols)


def test_bad_options_are_refused():
    meta = TASK.dataset_meta(SMALL)
    for extra, message in (({"levels": 4}, "levels=4"), ({"loss": "huber"}, "loss='huber'"),
                           ({"latent_channels": 0}, "latent_channels=0")):
        with pytest.raises(RaycvError, match=message):
            TASK.build_model(TASK.default_config().replace(extra=extra), meta)
    with pytest.raises(RaycvError, match="image_size=36"):
        TASK.dataset_meta({**SMALL, "image_size": 36})
    with pytest.raises(RaycvError, match="image_size 40 cannot train the factorized codec"):
        TASK.build_model(TASK.default_config().replace(model="factorized"),
                         TASK.dataset_meta({**SMALL, "image_size": 40}))
    for rd_lambda in (0.0, -0.01):
        with pytest.raises(RaycvError, match=f"invalid rd_lambda={rd_lambda}: expected a weight > 0"):
            TASK.card.check_options({"rd_lambda": rd_lambda})
    with pytest.raises(RaycvError, match="invalid refine_steps=-1: expected a whole number of steps from 0 to 10000"):
        TASK.card.check_options({"refine_steps": -1})
    with pytest.raises(RaycvError, match="invalid low_contrast_share=2.0: expected a share from 0 to 1"):
        TASK.card.check_options({"low_contrast_share": 2.0})
    with pytest.raises(RaycvError, match=r"invalid dead_leaves_share=1.5: expected a share of the crops in \[0, 1\]"):
        TASK.dataset_meta({**SMALL, "photos": "brick", "dead_leaves_share": 1.5})


def test_training_crops_mix_named_photos_with_dead_leaves_and_eval_photos_holds_them_out():
    from raycv.data.photos import held_out_photos

    params = {**SMALL, "photos": "brick,grass", "dead_leaves_share": 0.5}
    meta = TASK.dataset_meta(params)
    assert meta["training_photos"] == ["brick", "grass"] and meta["source"] == "photos brick,grass, 50% dead leaves"
    held_out = held_out_photos(meta)
    assert "brick" not in held_out and "grass" not in held_out and "coins" in held_out
    # brick and grass are grey photographs; dead leaves are coloured.
    crops = [TASK.synthesize_sample(np.random.default_rng([7, index]), params)["image"] for index in range(40)]
    grey = [np.ptp(decode_image(crop).astype(int), axis=2).max() == 0 for crop in crops]
    assert 10 <= sum(grey) <= 30, sum(grey)


def test_low_contrast_crops_keep_their_mean_colour_and_lose_up_to_nine_tenths_of_their_contrast():
    from raycv.data.augment import random_low_contrast

    torch.manual_seed(0)
    images = to_model_input(batch_of(64)["image"])
    spread = images.std(dim=(-3, -2, -1))
    assert torch.equal(random_low_contrast(images, 0.0), images)
    lowered = random_low_contrast(images, 1.0)
    assert torch.allclose(lowered.mean(dim=(-2, -1)), images.mean(dim=(-2, -1)), atol=1e-5)
    ratios = lowered.std(dim=(-3, -2, -1)) / spread
    assert ratios.min() >= 0.1 - 1e-4 and ratios.max() <= 1 + 1e-4
    assert ratios.min() < 0.2 and ratios.max() > 0.7  # log-uniform over the range, not one factor
    assert lowered.min() >= 0 and lowered.max() <= 1
    assert 20 <= int((random_low_contrast(images, 0.5) != images).flatten(1).any(1).sum()) <= 44
    # The task's augmentation: turns alone keep every image's contrast; the option lowers it.
    config = TASK.default_config()
    total = float(spread.sum())
    turned = TASK.augment(batch_of(64), config)["image"]
    assert abs(float(turned.std(dim=(-3, -2, -1)).sum()) - total) < 1e-3 * total
    faint = TASK.augment(batch_of(64), config.replace(extra={"low_contrast_share": 1.0}))["image"]
    assert float(faint.std(dim=(-3, -2, -1)).sum()) < 0.7 * total


@pytest.mark.parametrize(("model_name", "latent_shape"), [("ae", [16, 6, 8]), ("factorized", [48, 3, 4])])
def test_predict_codes_any_size_and_the_code_decodes_to_the_reconstruction(model_name, latent_shape):
    meta = TASK.dataset_meta(SMALL)
    model = TASK.build_model(TASK.default_config().replace(model=model_name, **TINY), meta).eval()
    loaded = type("Loaded", (), {"task": TASK, "model": model, "dataset_meta": meta})()
    image = np.random.default_rng(1).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    grey_image = np.repeat(image[..., :1], 3, axis=2)
    for picture, grey in ((image, False), (grey_image, True)):
        (answer,) = predict(loaded, [picture])
        # The code holds the latent of the image padded to 48 x 64 (a multiple of 16, the largest stride).
        assert answer["latent_shape"] == latent_shape and (answer["width"], answer["height"]) == (50, 37)
        code = base64.b64decode(answer["code"])
        assert answer["bytes"] == len(code) and answer["bpp"] == pytest.approx(8 * len(code) / (37 * 50))
        reconstruction = decode_image(base64.b64decode(answer["image_png"]))
        assert reconstruction.shape == (37, 50, 3)
        assert np.array_equal(decompress(model, code, 37, 50), reconstruction)
        # A grey image decodes to grey (the flag in its code); a coloured one keeps the decoder's colours.
        spread = int(np.ptp(reconstruction.astype(int), axis=2).max())
        assert (spread == 0) if grey else (spread > 0), (grey, spread)


def test_compress_and_decompress_verbs_round_trip_and_refuse_damaged_or_foreign_files(tmp_path, capsys):
    torch.manual_seed(0)
    meta = TASK.dataset_meta(SMALL)
    cfg = TASK.default_config().replace(model="factorized", **TINY)
    first = saved_checkpoint(TASK, cfg, meta, str(tmp_path / "first"))
    other = saved_checkpoint(TASK, cfg, meta, str(tmp_path / "other"))  # another random start
    image = np.random.default_rng(3).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    packed, out = tmp_path / "in.rcv", tmp_path / "out.png"
    assert main(["compress_ae", "compress-image", "--checkpoint", first, "--image", str(tmp_path / "in.png"),
                 "--out", str(packed)]) == 0
    assert main(["compress_ae", "decompress", "--checkpoint", first, "--code", str(packed), "--out", str(out)]) == 0
    loaded = load_model(first, "compress_ae")
    (answer,) = predict(loaded, [image])
    assert np.array_equal(decode_image(out.read_bytes()), decode_image(base64.b64decode(answer["image_png"])))
    data = packed.read_bytes()
    assert len(data) == 20 + answer["bytes"]  # the header, then the code predict answers
    capsys.readouterr()
    damaged = {"truncated.rcv": (data[:-3], "truncated: .* of its .* code bytes"),
               "flipped.rcv": (data[:-1] + bytes([data[-1] ^ 1]), "damaged: the code's checksum does not match"),
               "photo.rcv": (png_bytes(image), "not a compressed image"),
               "old.rcv": (b"RCV1" + data[4:], "written by an older raycv .* compress the image again")}
    for name, (content, message) in damaged.items():
        (tmp_path / name).write_bytes(content)
        assert main(["compress_ae", "decompress", "--checkpoint", first, "--code", str(tmp_path / name),
                     "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert re.search(f"{name}: {message}", error) and len(error.splitlines()) == 1, error
    assert main(["compress_ae", "decompress", "--checkpoint", other, "--code", str(packed), "--out", str(out)]) == 2
    assert "in.rcv: coded by another model" in capsys.readouterr().err


def test_network_compression_refuses_the_stages_a_codec_cannot_go_through_in_one_line(tmp_path, capsys):
    meta = TASK.dataset_meta(SMALL)
    checkpoint = saved_checkpoint(TASK, TASK.default_config().replace(model="factorized", **TINY), meta,
                                  str(tmp_path / "codec"))
    # Refused before any data is read: the folder given as data does not exist.
    command = ["compress_ae", "compress", "--checkpoint", checkpoint, "--data", str(tmp_path / "absent"),
               "--out", str(tmp_path / "out")]
    for stages, refused in (("channels,int8,export", "channels, int8, export stages"), ("sparse,int8", "int8 stage")):
        assert main([*command, "--stages", stages]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and f"compress_ae cannot run the {refused}: " in error, error
        assert error.endswith("run --stages sparse") and "bit-exactly" in error, error
    # By default compress_ae runs the stage it can, so the command goes on to look for the data.
    assert main(command) == 2 and "dataset not found" in capsys.readouterr().err
    with pytest.raises(RaycvError, match="compress_ae cannot run the channels, int8, export stages"):
        compress_checkpoint(checkpoint, str(tmp_path / "absent"), str(tmp_path / "out"))  # the Python API alike


def test_rd_curve_puts_the_models_beside_jpeg_and_webp_curves(tmp_path, capsys):
    meta = TASK.dataset_meta({**SMALL, "photos": "brick"})
    checkpoint = saved_checkpoint(TASK, TASK.default_config().replace(model="factorized", **TINY), meta,
                                  str(tmp_path / "codec"))
    out = tmp_path / "rd"
    assert main(["compress_ae", "rd-curve", "--checkpoint", checkpoint, "--photos", "coins", "--out", str(out),
                 "--refine-steps", "2"]) == 0
    rows = json.loads((out / "photos.json").read_text())
    assert {row["codec"] for row in rows} >= {"factorized λ=0.01 refined 2", "jpeg q2", "jpeg q90", "webp q2",
                                              "webp q90"}
    for codec in ("jpeg", "webp"):
        curve = [row for row in rows if row["codec"].startswith(codec + " q")]
        assert len(curve) == 11 and all(0 < row["ms_ssim"] <= 1 for row in curve)
        # Higher quality, more bits and a closer picture.
        assert [row["bpp"] for row in curve] == sorted(row["bpp"] for row in curve)
        assert curve[-1]["psnr"] > curve[0]["psnr"] + 10 and curve[-1]["ms_ssim"] > curve[0]["ms_ssim"]
    printed = capsys.readouterr().out
    assert Image.open(out / "rate_distortion.png").size[0] > 1000 and "webp q90" in printed
    assert "against JPEG at the same bits per pixel" in printed and "gain_db" in printed


def test_against_jpeg_reads_jpeg_curve_at_the_models_rate():
    rows = [{"image": "mean", "codec": "jpeg q10", "bpp": 0.2, "psnr": 30.0},
            {"image": "mean", "codec": "jpeg q20", "bpp": 0.4, "psnr": 32.0},
            {"image": "moon", "codec": "factorized λ=0.01", "bpp": 0.1, "psnr": 40.0},  # one photo: not a mean
            {"image": "mean", "codec": "factorized λ=0.01", "bpp": 0.3, "psnr": 31.5}]
    assert against_jpeg(rows) == [{"codec": "factorized λ=0.01", "bpp": 0.3, "psnr": 31.5,
                                   "jpeg_psnr_same_bpp": 31.0, "gain_db": 0.5}]


@pytest.fixture(scope="module")
def aegan_run(ray_session, tmp_path_factory):
    from raycv.train import fit

    folder = tmp_path_factory.mktemp("compress_ae")
    data = str(folder / "data")
    synthesize(TASK, data, {"train": 32, "val": 8}, seed=4, params=SMALL)
    cfg = TASK.default_config().replace(model="aegan", epochs=1, batch_size=8, workers=2, cpus_per_worker=1,
                                        storage=str(folder / "runs"), name="tiny", **TINY)
    return fit(TASK, cfg, data), folder


def test_fit_reports_bpp_and_eval_photos_puts_jpeg_beside(aegan_run, capsys):
    result, folder = aegan_run
    (row,) = result.history
    assert row["workers"] == 2 and 0 < row["val_bpp"] < 4 and row["val_latent_per_pixel"] == 0.25
    assert main(["compress_ae", "eval-photos", "--checkpoint", result.best_checkpoint, "--photos", "coins",
                 "--out", str(folder / "photos")]) == 0
    printed = capsys.readouterr().out
    assert "aegan" in printed and "jpeg q" in printed and (folder / "photos" / "coins_compress.png").exists()


def test_reconstruct_route_answers_a_png(aegan_run):
    result, _ = aegan_run
    image = np.random.default_rng(2).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    with served(result.best_checkpoint, "compress_ae") as base:
        url = f"{base}/v1/compress_ae"
        png = {"content": png_bytes(image), "headers": {"content-type": "image/png"}, "timeout": 60}
        shown = httpx.post(f"{url}/reconstruct", **png)
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/png", shown.text
        assert Image.open(io.BytesIO(shown.content)).size == (41, 30)
        answer = httpx.post(f"{url}/predict", **png).json()["predictions"][0]
        assert answer["latent_shape"] == [16, 4, 6] and answer["bpp"] > 0


def test_a_codec_from_before_refinement_loads_without_a_warning(tmp_path, recwarn):
    """refine_steps is an inference option: a checkpoint that does not record it cannot be misbuilt by its
    default, so loading it says nothing (options that shape the network still warn: tests/test_search.py)."""
    from raycv import checkpoint
    from raycv.tasks.base import with_task_options

    cfg = TASK.default_config().replace(model="factorized", **TINY)
    meta = TASK.dataset_meta(SMALL)
    stored = with_task_options(TASK, cfg).to_dict()
    del stored["extra"]["refine_steps"]
    checkpoint.save(str(tmp_path / "old"), TASK.build_model(cfg, meta),
                    {"task": "compress_ae", "config": stored, "dataset": meta, "epoch": 1, "history": []})
    loaded = checkpoint.load_model(str(tmp_path / "old"), "compress_ae", options={"refine_steps": 3})
    assert loaded.model.refine_steps == 3
    assert not [w for w in recwarn if "records no" in str(w.message)]
