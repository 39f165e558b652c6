"""Captcha reading: seeded synthesis, the SVHN-style reader and its errors, training, answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import train_steps

from raycv.config import TrainConfig
from raycv.data import text
from raycv.data.images import decode_image
from raycv.errors import RaycvError
from raycv.tasks import get_task

TASK = get_task("captcha")
PARAMS = TASK.synth_defaults
META = TASK.dataset_meta(PARAMS)


def rows(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    samples = [TASK.synthesize_sample(np.random.default_rng([seed, i]), PARAMS) for i in range(count)]
    return {key: np.array([s[key] for s in samples], dtype=object) for key in samples[0]}


def test_same_seed_gives_the_same_bytes_and_the_book_format():
    first, again, other = (TASK.synthesize_sample(np.random.default_rng(seed), PARAMS) for seed in (5, 5, 6))
    assert first["image"] == again["image"] and first["text"] == again["text"]
    assert first["image"] != other["image"]
    assert len(first["text"]) == 4 and set(first["text"]) <= set(text.CAPTCHA_ALPHABET)
    assert decode_image(first["image"]).shape == (60, 160, 3)


def test_svhn_folder_round_trip_and_its_bad_input_errors(ray_session, tmp_path):
    batch = rows(4)
    for split in ("train", "val"):
        text.write_svhn_split(str(tmp_path / split), [
            (f"{i}.png", data, [text.svhn_box(40 * k, 5, 30, 50, char) for k, char in enumerate(label)])
            for i, (data, label) in enumerate(zip(batch["image"], batch["text"], strict=False))])
    splits, meta = TASK.read(str(tmp_path), TASK.default_config())
    assert meta["length"] == 4 and meta["image_size"] == META["image_size"]
    read_back = splits["val"].take_all()
    assert [row["text"] for row in read_back] == list(batch["text"])
    assert [row["image"] for row in read_back] == list(batch["image"])
    assert json.loads(read_back[0]["boxes"])[1] == {"left": 40, "top": 5, "width": 30, "height": 50,
                                                    "label": batch["text"][0][1]}

    labels = tmp_path / "val" / "labels.json"
    good = json.loads(labels.read_text())

    def refused(record: dict, message: str) -> None:
        labels.write_text(json.dumps([good[0], record]))
        with pytest.raises(RaycvError, match=message):
            TASK.read(str(tmp_path), TASK.default_config())

    box = {"left": 0, "top": 0, "width": 10, "height": 10}
    refused({"filename": "1.png", "boxes": [{**box, "label": "a"}] * 4}, r"entry 1 \(1.png\).*'a' outside the alphabet")
    refused({"filename": "1.png", "boxes": []}, r"entry 1 \(1.png\): empty label")
    refused({"filename": "1.png", "boxes": [{**box, "left": 155, "label": "A"}] * 4},
            r"entry 1 \(1.png\): box 0 \(left=155.*outside the 160x60 image")
    refused({"filename": "1.png", "boxes": [{**box, "label": "A"}] * 3}, r"1.png: label 'AAA' has 3 characters")


def test_training_steps_lower_the_loss_and_answers_name_each_character():
    torch.manual_seed(0)
    decoded = TASK.decode(rows(32), META)
    batch = {key: torch.from_numpy(value) for key, value in decoded.items()}
    cfg = TASK.default_config().replace(width=0.25, label_smoothing=0.0)
    model = TASK.build_model(cfg, META)
    losses = train_steps(TASK, model, batch, cfg, 30)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    metrics = TASK.evaluate(model, [batch], META)
    assert metrics["char_accuracy"] > 0.5 and 0 <= metrics["accuracy"] <= metrics["char_accuracy"]

    with torch.no_grad():
        answers = TASK.postprocess(model(TASK.preprocess(list(decoded["image"][:3]), META)), META, [(60, 160)] * 3)
    assert len(answers) == 3
    for answer in answers:
        assert len(answer["text"]) == 4 and [c["char"] for c in answer["characters"]] == list(answer["text"])
        assert all(0 < c["confidence"] <= 1 for c in answer["characters"])


def test_postprocess_reads_the_most_likely_character_per_position():
    logits = torch.full((1, 4, 36), -5.0)
    for position, char in enumerate("A7Z0"):
        logits[0, position, text.CAPTCHA_ALPHABET.index(char)] = 5.0
    [answer] = TASK.postprocess(logits, META, [(60, 160)])
    assert answer["text"] == "A7Z0" and answer["characters"][0]["confidence"] > 0.99


def test_bad_parameters_are_refused():
    with pytest.raises(RaycvError, match="invalid length=0"):
        TASK.dataset_meta({**PARAMS, "length": 0})
    with pytest.raises(RaycvError, match="unknown model 'vgg'"):
        TASK.build_model(TrainConfig(model="vgg"), META)
    with pytest.raises(RaycvError, match="sample 1: label 'AB' has 2 characters, more than the 1 allowed"):
        text.encode_texts(["A", "AB"], text.CAPTCHA_ALPHABET, 1)
    with pytest.raises(RaycvError, match="nor an SVHN-style folder"):
        TASK.read("/nonexistent-folder", TASK.default_config())
