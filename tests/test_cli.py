"""The command line: bad input gives one line naming the value and exit status 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raycv.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("raycv: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_negative_epochs_in_a_fresh_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "raycv.cli", "classify", "train", "--data", str(tmp_path),
                             "--epochs", "-3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "raycv: error: invalid epochs=-3: expected an integer >= 1"
    assert "Traceback" not in result.stderr


def test_missing_dataset_path_fails_before_ray_starts(tmp_path):
    missing = tmp_path / "no-such-data"
    result = subprocess.run([sys.executable, "-m", "raycv.cli", "classify", "train", "--data", str(missing)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"raycv: error: dataset not found: {missing}"  # no Ray warning before it


def test_help_leaves_out_test_only_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["classify", "train", "--help"])
    help_text = capsys.readouterr().out
    assert "--lr" in help_text and "--fail-at-epoch" not in help_text
    from raycv.cli import parse_args

    assert parse_args(["classify", "train", "--data", "x", "--fail-at-epoch", "2"]).fail_at_epoch == 2


def test_missing_dataset_path(ray_session, capsys, tmp_path):
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(tmp_path / "no-such-data"), "--epochs", "1")
    assert_one_line_error(code, err, "dataset not found", "no-such-data")


def test_unknown_model_name(ray_session, capsys, classify_data, tmp_path):
    code, _, err = run_cli(capsys, "classify", "train", "--data", classify_data, "--model", "vgg99",
                           "--storage", str(tmp_path))
    assert_one_line_error(code, err, "'vgg99'", "closest: vgg19", "raycv classify models")


def test_corrupt_cifar_batch(ray_session, capsys, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00datq")  # a pickle cut short
    (folder / "test_batch").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "classify", "train", "--data", str(folder), "--storage", str(tmp_path))
    assert_one_line_error(code, err, "corrupt CIFAR batch file", "data_batch_1")


def test_eval_and_predict_a_trained_checkpoint(ray_session, capsys, ddp_run, classify_data, tmp_path):
    code, out, _ = run_cli(capsys, "classify", "eval", "--checkpoint", ddp_run.best_checkpoint, "--data", classify_data)
    assert code == 0 and "accuracy" in out

    from raycv.synth import open_dataset
    from raycv.tasks import get_task

    splits, _ = open_dataset(get_task("classify"), classify_data)
    row = splits["val"].take(1)[0]
    image = tmp_path / "sample.png"
    image.write_bytes(row["image"])
    code, out, _ = run_cli(capsys, "classify", "predict", "--checkpoint", ddp_run.best_checkpoint, str(image))
    assert code == 0
    # Ray's log monitor may interleave worker lines into stdout: read the line for this image only.
    answer = json.loads(next(line for line in out.splitlines() if line.startswith(f"{image}: ")).split(": ", 1)[1])
    probabilities = [entry["probability"] for entry in answer]
    assert len(answer) == 5 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, _, err = run_cli(capsys, "classify", "predict", "--checkpoint", ddp_run.best_checkpoint, str(text))
    assert_one_line_error(code, err, "cannot read image", "notes.png")
    code, _, err = run_cli(capsys, "classify", "eval", "--checkpoint", str(tmp_path), "--data", classify_data)
    assert_one_line_error(code, err, "not a raycv checkpoint")


def test_synth_sizes_default_to_what_each_task_was_measured_with():
    from raycv.cli import build_parser

    parser = build_parser()
    sizes = {task: vars(parser.parse_args([task, "synth", "--out", "x"])) for task in ("captcha", "search", "classify")}
    assert (sizes["captcha"]["train_size"], sizes["captcha"]["val_size"]) == (100_000, 2_000)
    assert sizes["search"]["train_size"] == 30_000 and sizes["classify"]["train_size"] == 20_000
    assert parser.parse_args(["captcha", "synth", "--out", "x", "--train-size", "5"]).train_size == 5
