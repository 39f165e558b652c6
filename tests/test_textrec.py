"""Text-line recognition: seeded line synthesis with boxes, CTC decoding, training, variable widths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import train_steps

from raycv.data.images import decode_image
from raycv.errors import RaycvError
from raycv.tasks import get_task
from raycv.tasks.textrec import COLUMN_STRIDE, ctc_beam_decode, ctc_greedy_decode

TASK = get_task("textrec")
STREET = {**TASK.synth_defaults, "source": "street"}
CAPTCHAS = TASK.synth_defaults


def rows(params: dict, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    samples = [TASK.synthesize_sample(np.random.default_rng([seed, i]), params) for i in range(count)]
    return {key: np.array([s[key] for s in samples], dtype=object) for key in samples[0]}


def columns(alphabet: str, *frames: dict[str, float]) -> torch.Tensor:
    """(T, classes + 1) probabilities from per-column {char: p} (blank "-" takes the rest)."""
    table = torch.zeros(len(frames), len(alphabet) + 1)
    for t, frame in enumerate(frames):
        for char, p in frame.items():
            table[t, 0 if char == "-" else alphabet.index(char) + 1] = p
        table[t, 0] += 1 - table[t].sum()
    return table


def test_same_seed_same_bytes_and_boxes_cover_each_digit():
    for params in (STREET, CAPTCHAS):
        first, again = (TASK.synthesize_sample(np.random.default_rng(3), params) for _ in range(2))
        assert first == again
    batch = rows(STREET, 12)
    lengths = {len(label) for label in batch["text"]}
    assert lengths <= set(range(1, 6)) and len(lengths) > 2 and all(set(t) <= set("0123456789") for t in batch["text"])
    for data, label, boxes in zip(batch["image"], batch["text"], batch["boxes"], strict=False):
        image, boxes = decode_image(data), json.loads(boxes)
        assert "".join(box["label"] for box in boxes) == label
        lefts = [box["left"] for box in boxes]
        assert lefts == sorted(lefts)  # reading order
        for box in boxes:
            assert box["left"] >= 0 and box["top"] >= 0 and box["width"] > 2 and box["height"] > 5
            assert box["left"] + box["width"] <= image.shape[1] and box["top"] + box["height"] <= image.shape[0]
    captcha_lengths = {len(label) for label in rows(CAPTCHAS, 12)["text"]}
    assert captcha_lengths <= set(range(1, 10)) and len(captcha_lengths) > 3


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    probabilities = columns("AB", {"A": 0.9}, {"A": 0.7}, {"-": 0.8}, {"A": 0.6}, {"B": 0.95}, {"-": 1.0})
    decoded, confidences = ctc_greedy_decode(probabilities, "AB")
    assert decoded == "AAB"
    assert confidences == pytest.approx([0.9, 0.6, 0.95])


def test_ctc_beam_decode_sums_alignments_where_greedy_picks_one_path():
    # Each column: blank 0.6, A 0.4. Best path "--" gives "" (0.36), but "A" has three paths
    # (A-, -A, AA) worth 0.24 + 0.24 + 0.16 = 0.64.
    probabilities = columns("A", {"A": 0.4}, {"A": 0.4})
    assert ctc_greedy_decode(probabilities, "A")[0] == ""
    assert ctc_beam_decode(probabilities, "A") == "A"
    # A repeated character needs a blank between its two emissions.
    repeated = columns("AB", {"A": 0.9}, {"-": 0.9}, {"A": 0.9}, {"B": 0.9})
    assert ctc_beam_decode(repeated, "AB") == "AAB" and ctc_greedy_decode(repeated, "AB")[0] == "AAB"
    assert ctc_beam_decode(columns("AB", {"A": 0.9}, {"A": 0.9}), "AB") == "A"


def test_training_steps_lower_the_ctc_loss_and_any_width_is_read():
    torch.manual_seed(0)
    for params in (STREET, CAPTCHAS):
        meta = TASK.dataset_meta(params)
        decoded = TASK.decode(rows(params, 16), meta)
        assert decoded["image"].shape == (16, 32, 192, 3)
        batch = {key: torch.from_numpy(value) for key, value in decoded.items()}
        cfg = TASK.default_config()
        model = TASK.build_model(cfg, meta)
        losses = train_steps(TASK, model, batch, cfg, 15)
        assert losses[-1] < 0.6 * losses[0]
    # Still in training mode (15 steps leave the batch-norm running statistics far from the batch's own),
    # evaluate's loss must agree with what training reached.
    with torch.no_grad():
        metrics = TASK.evaluate(model, [batch], meta)
    assert 0 <= metrics["sequence_accuracy"] <= 1 and metrics["cer"] >= 0 and metrics["loss"] < 0.6 * losses[0]
    model.eval()

    narrow, wide = np.zeros((20, 30, 3), np.uint8), np.full((60, 700, 3), 255, np.uint8)
    inputs = TASK.preprocess([narrow, wide], meta)
    assert inputs.shape == (2, 3, 32, 373)  # 700 * 32 / 60: the widest line sets the batch width
    with torch.no_grad():
        answers = TASK.postprocess(model(inputs), meta, [(20, 30), (60, 700)])
    assert len(answers) == 2
    for answer in answers:
        assert set(answer) == {"text", "characters"}
        assert "".join(c["char"] for c in answer["characters"]) == answer["text"]


def test_ctc_and_decoding_read_only_the_columns_that_cover_the_line():
    meta = TASK.dataset_meta(STREET)
    decoded = TASK.decode(rows(STREET, 8), meta)
    for image, count in zip(decoded["image"], decoded["columns"], strict=False):
        # the right padding repeats the line's last column; everything before it must be covered
        ink = np.flatnonzero(np.abs(image.astype(int) - image[:, -1:].astype(int)).max(axis=(0, 2)) > 0)
        assert ink.max() // COLUMN_STRIDE < count < image.shape[1] // COLUMN_STRIDE, (ink.max(), count)
    # A 16-pixel line covers 4 columns (+1 for training shifts): a character that only the padding's
    # last column scores is not read.
    probabilities = columns(meta["alphabet"], {"7": 0.9}, {"7": 0.8}, *[{"-": 1.0}] * 7, {"3": 0.99})
    answer = TASK.postprocess(probabilities.log()[None], meta, [(32, 16)])[0]
    assert answer["text"] == "7"
    assert ctc_greedy_decode(probabilities, meta["alphabet"])[0] == "73"


def test_labels_outside_the_alphabet_and_bad_parameters_are_refused():
    meta = TASK.dataset_meta(STREET)
    with pytest.raises(RaycvError, match=r"sample 1: label '4A' has character\(s\) 'A' outside the alphabet"):
        TASK.decode({"image": rows(STREET, 2)["image"], "text": np.array(["7", "4A"], dtype=object)}, meta)
    with pytest.raises(RaycvError, match="invalid source='books'"):
        TASK.dataset_meta({**STREET, "source": "books"})
    with pytest.raises(RaycvError, match="max_length=7 for source 'street'"):
        TASK.dataset_meta({**STREET, "max_length": 7})


@pytest.mark.parametrize("task_name, params", [("textrec", {"source": "street"}), ("captcha", {})])
def test_examples_verb_draws_the_readings_of_a_split(ray_session, tmp_path, capsys, task_name, params):
    from PIL import Image

    from conftest import saved_checkpoint
    from raycv.cli import main
    from raycv.synth import synthesize

    task = get_task(task_name)
    data = str(tmp_path / "lines")
    manifest = synthesize(task, data, {"train": 0, "val": 6}, params=params)
    checkpoint = saved_checkpoint(task, task.default_config(), manifest["meta"], str(tmp_path / "model"))
    out = tmp_path / "readings.png"
    assert main([task_name, "examples", "--checkpoint", checkpoint, "--data", data, "--count", "6",
                 "--out", str(out)]) == 0
    assert "6 readings" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert width > height > 0  # two rows of four panels, 3 inches per column
    assert main([task_name, "examples", "--checkpoint", checkpoint, "--data", data, "--split", "test",
                 "--out", str(out)]) == 2
    assert "no split 'test'" in capsys.readouterr().err
