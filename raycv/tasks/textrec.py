"""Text-line recognition with a CRNN and CTC (textbook chapter 9).

Sources (`--param source=...`): variable-length captchas (1-9 of [0-9A-Z], the book's set) or
street-number lines (1-5 digits in varied offline fonts, colours, backgrounds, blur and perspective,
with per-character SVHN-style boxes). Real data: SVHN-style folders (see raycv/data/text.py).

Lines are scaled to 32 pixels high keeping their aspect ratio and right-padded: to a fixed width in
training, to the widest line of the batch at inference, so any width can be read. The CRNN emits one
score vector per 4 input columns; CTC aligns the columns that cover the line itself (not its padding)
with the label, and decoding reads the same columns. Metrics: sequence accuracy (greedy and
prefix-beam-search decoding) and character error rate.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any
from collections.abc import Iterable

import numpy as np
import ray.data
import torch
import torchmetrics
from torch import nn

from raycv.config import TrainConfig
from raycv.data import augment, text
from raycv.data.images import CIFAR_MEAN, CIFAR_STD, decode_image, encode_png, to_model_input
from raycv.errors import RaycvError
from raycv.models.common import Normalized
from raycv.models.crnn import CRNN
from raycv.tasks.base import Task
from raycv.tasks.cards import CARDS

LINE_HEIGHT = 32
TRAIN_WIDTH = 192  # 6 times the height: 9 captcha characters or 5 street digits fit without squeezing
MAX_INFERENCE_WIDTH = 4 * TRAIN_WIDTH  # longer requests are squeezed rather than allowed unbounded memory
CAPTCHA_HEIGHT = 60  # the captcha package's look is tuned for this height
STREET_HEIGHT = 48
# source -> (alphabet, longest label)
SOURCES = {"captcha": (text.CAPTCHA_ALPHABET, 9), "street": (text.DIGITS, 5)}
MODELS = {"crnn_lstm": "lstm", "crnn_gru": "gru"}
BEAM_WIDTH = 8
COLUMN_STRIDE = 4  # input pixels per CRNN output column (the conv stack pools the width twice by 2)


def line_columns(width: int) -> int:
    """CRNN output columns that cover a line `width` pixels wide, plus one for the training shifts.
    CTC and decoding stop there. Scoring the padding as well let training settle on a wrong optimum
    that wrote a line's last character into the final padding column, where the backward LSTM has seen
    only padding: street lines sat at sequence accuracy 0.10 with every last digit a guess."""
    return -(-width // COLUMN_STRIDE) + 1


def ctc_greedy_decode(probabilities: torch.Tensor, alphabet: str) -> tuple[str, list[float]]:
    """Best path of one line's (T, classes + 1) probabilities: the most likely class per column,
    repeats merged, blanks (class 0) dropped. Each character's confidence is its highest
    probability over the columns that emitted it."""
    confidences, classes = probabilities.max(dim=1)
    chars, char_confidences, previous = [], [], 0
    for index, confidence in zip(classes.tolist(), confidences.tolist(), strict=False):
        if index != 0 and index == previous:
            char_confidences[-1] = max(char_confidences[-1], confidence)
        elif index != 0:
            chars.append(alphabet[index - 1])
            char_confidences.append(confidence)
        previous = index
    return "".join(chars), char_confidences


def ctc_beam_decode(probabilities: torch.Tensor, alphabet: str, beam_width: int = BEAM_WIDTH,
                    min_probability: float = 1e-3) -> str:
    """CTC prefix beam search over one line's (T, classes + 1) probabilities: keeps the `beam_width`
    most likely label prefixes, each summed over all alignments (ending in a blank or not), so a text
    spread over many mediocre paths beats a single best path. Classes below `min_probability` in a
    column are skipped (they cannot change the top beams, and skipping them keeps this fast)."""
    rows = probabilities.double().cpu().numpy()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (1.0, 0.0)}  # prefix -> (p ends blank, p ends char)
    for row in rows:
        candidates = [int(c) for c in np.flatnonzero(row >= min_probability)]
        following: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for prefix, (ends_blank, ends_char) in beams.items():
            for c in candidates:
                p = row[c]
                if c == 0:
                    following[prefix][0] += (ends_blank + ends_char) * p
                elif prefix and prefix[-1] == c:
                    following[prefix][1] += ends_char * p  # the same character continues
                    following[prefix + (c,)][1] += ends_blank * p  # a blank separated a repeat
                else:
                    following[prefix + (c,)][1] += (ends_blank + ends_char) * p
        beams = dict(sorted(following.items(), key=lambda item: -sum(item[1]))[:beam_width])
    best = max(beams.items(), key=lambda item: sum(item[1]))[0]
    return "".join(alphabet[c - 1] for c in best)


def label_texts(labels: torch.Tensor, lengths: torch.Tensor, alphabet: str) -> list[str]:
    return ["".join(alphabet[c - 1] for c in row[:length])
            for row, length in zip(labels.tolist(), lengths.tolist(), strict=False)]


def save_readings(images: list[np.ndarray], answers: list[dict[str, Any]], truths: Iterable[str], out: str,
                  columns: int = 4) -> None:
    """A README picture for any text task (captcha, textrec), written to the PNG `out`: each line with its
    reading (`answers`, the task's predictions) above it, green when right, red when wrong with the
    truth after a slash."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(-(-len(images) // columns), columns, squeeze=False,
                                figsize=(3 * columns, 0.9 * len(images) / columns + 0.5))
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, answer, truth in zip(axes.flat, images, answers, truths, strict=False):
        right = answer["text"] == truth
        axis.imshow(image)
        axis.set_title(answer["text"] if right else f"{answer['text']} / {truth}", color="green" if right else "red",
                       fontsize=10, family="monospace")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


class TextRecognitionTask(Task):
    card = CARDS["textrec"]
    metric = "sequence_accuracy"
    metric_mode = "max"
    # max_length 0: the source's longest label (captcha 9, street 5)
    synth_defaults = {"source": "captcha", "min_length": 1, "max_length": 0}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        source = params["source"]
        if source not in SOURCES:
            raise RaycvError(f"invalid source={source!r}: expected one of {', '.join(SOURCES)}")
        alphabet, longest = SOURCES[source]
        min_length, max_length = int(params["min_length"]), int(params["max_length"]) or longest
        if not 1 <= min_length <= max_length <= longest:
            raise RaycvError(f"invalid lengths min_length={min_length}, max_length={max_length} for source {source!r}: "
                             f"expected 1 <= min_length <= max_length <= {longest}")
        return {"alphabet": alphabet, "max_length": max_length, "text_source": source,
                "image_size": [LINE_HEIGHT, TRAIN_WIDTH]}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        meta = self.dataset_meta(params)
        alphabet = meta["alphabet"]
        length = int(rng.integers(int(params["min_length"]), meta["max_length"] + 1))
        label = "".join(alphabet[i] for i in rng.integers(len(alphabet), size=length))
        if meta["text_source"] == "captcha":
            image = text.render_captcha(rng, label, text.captcha_width(length, CAPTCHA_HEIGHT), CAPTCHA_HEIGHT)
            return {"image": encode_png(image), "text": label}
        image, boxes = text.render_street_number(rng, label, STREET_HEIGHT)
        return {"image": encode_png(image), "text": label, "boxes": json.dumps(boxes)}

    def read(self, path: str, cfg: TrainConfig) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        """An SVHN-style folder; labels over [0-9A-Z], as long as the longest one found."""
        splits = text.read_svhn_folder(path, text.CAPTCHA_ALPHABET)
        max_length = max(len(row["text"]) for rows in splits.values() for row in rows)
        meta = {"alphabet": text.CAPTCHA_ALPHABET, "max_length": max_length, "text_source": "svhn-json",
                "image_size": [LINE_HEIGHT, TRAIN_WIDTH], "format": "svhn-json"}
        return {split: ray.data.from_items(rows) for split, rows in splits.items()}, meta

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        height, width = meta["image_size"]
        lines = [text.resize_to_height(decode_image(data), height, width) for data in batch["image"]]
        labels, lengths = text.encode_texts((str(t) for t in batch["text"]), meta["alphabet"], meta["max_length"],
                                            offset=1)
        columns = np.array([line_columns(line.shape[1]) for line in lines], dtype=np.int64)
        return {"image": text.pad_lines(lines, width), "label": labels, "length": lengths, "columns": columns}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        return Normalized(CRNN(len(meta["alphabet"]), width=cfg.width, rnn=MODELS[cfg.model]), CIFAR_MEAN, CIFAR_STD)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        return {**batch, "image": augment.random_translate(to_model_input(batch["image"]), pad=2)}

    @staticmethod
    def ctc_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        # CTC in float32 even under autocast: its log-space sums lose too much in half precision.
        log_probs = logits.float().log_softmax(dim=2).transpose(0, 1)  # (T, N, classes + 1)
        steps = batch["columns"].clamp(max=logits.shape[1])
        return nn.functional.ctc_loss(log_probs, batch["label"], steps, batch["length"], blank=0,
                                      reduction=reduction, zero_infinity=True)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        return self.ctc_loss(model(to_model_input(batch["image"])), batch)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        alphabet = meta["alphabet"]
        greedy_accuracy, beam_accuracy, mean_loss = (torchmetrics.MeanMetric().to(device) for _ in range(3))
        error_rate = torchmetrics.text.CharErrorRate().to(device)
        for batch in batches:
            logits = model(to_model_input(batch["image"])).float()
            probabilities = [line[:columns] for line, columns in
                             zip(logits.detach().softmax(dim=2).cpu(), batch["columns"].tolist(), strict=False)]
            truths = label_texts(batch["label"], batch["length"], alphabet)
            greedy = [ctc_greedy_decode(line, alphabet)[0] for line in probabilities]
            beam = [ctc_beam_decode(line, alphabet) for line in probabilities]
            error_rate.update(greedy, truths)
            greedy_accuracy.update(torch.tensor([p == t for p, t in zip(greedy, truths, strict=False)],
                                                dtype=torch.float, device=device))
            beam_accuracy.update(torch.tensor([p == t for p, t in zip(beam, truths, strict=False)],
                                              dtype=torch.float, device=device))
            mean_loss.update(self.ctc_loss(logits, batch), weight=len(logits))
        return {"sequence_accuracy": float(greedy_accuracy.compute()), "cer": float(error_rate.compute()),
                "beam_sequence_accuracy": float(beam_accuracy.compute()), "loss": float(mean_loss.compute())}

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        """Any widths: each line scaled to the training height, the batch padded to its widest line."""
        lines = [text.resize_to_height(image, meta["image_size"][0], MAX_INFERENCE_WIDTH) for image in images]
        return to_model_input(torch.from_numpy(text.pad_lines(lines)))

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        probabilities = outputs.float().softmax(dim=2).cpu()
        height = meta["image_size"][0]
        columns = [line_columns(text.scaled_width(size, height, MAX_INFERENCE_WIDTH)) for size in sizes]
        return [text.text_answer(*ctc_greedy_decode(line[:count], meta["alphabet"]))
                for line, count in zip(probabilities, columns, strict=False)]


TASK = TextRecognitionTask()
