"""Sweeps: a 4-trial learning-rate x sparsity sweep on the shared Ray instance."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import TINY
from raycv.checkpoint import load_model
from raycv.errors import RaycvError
from raycv.sparsity import measured_sparsity
from raycv.tasks import get_task
from raycv.tune import pareto_front, parse_space, sweep, trial_config


@pytest.fixture(scope="module")
def lr_sparsity_sweep(classify_data, workdir):
    task = get_task("classify")
    # 0.9 CPU per trial worker: two trials plus their (0.01 CPU) Tune drivers fit on 2 cores. The sane
    # rate must be clearly ahead when ASHA ranks: in-process on this data, AdamW at a constant 1e-3 reaches
    # 0.14 / 0.23 / 0.27 val accuracy after epochs 1 / 2 / 3, while 3e-3 stays near chance (0.08-0.15) and
    # once lost to lr 30 predicting one class (0.109). So: 1e-3, and the first ASHA rung at epoch 2.
    base = task.default_config().replace(epochs=3, workers=1, cpus_per_worker=0.9, storage=str(workdir / "runs"),
                                         schedule="constant", **{**TINY, "lr": 1e-3})
    # lr 30 makes AdamW diverge: a clearly bad trial that ASHA should cut at its first rung.
    space = parse_space(["lr=grid:0.001,30.0", "sparsity=grid:0.0,0.5"], base)
    return sweep(task, base, classify_data, space, name="lr-sparsity", max_concurrent=2, grace_period=2)


def test_sweep_ranks_trials_and_keeps_the_best_checkpoint(lr_sparsity_sweep):
    rows = lr_sparsity_sweep.rows
    assert len(rows) == 4
    assert rows[0]["lr"] == 0.001  # a sane learning rate wins
    assert rows[0]["val_accuracy"] > max(row["val_accuracy"] for row in rows if row["lr"] == 30.0)
    assert all(row["latency_ms_b1"] > 0 for row in rows)
    assert os.path.getsize(os.path.join(lr_sparsity_sweep.path, "tradeoff.png")) > 10_000
    loaded = load_model(lr_sparsity_sweep.best_checkpoint, "classify")
    with torch.no_grad():
        assert loaded.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    if lr_sparsity_sweep.best_config["sparsity"] == 0.5:
        assert abs(measured_sparsity(loaded.model) - 0.5) < 1e-3


def test_asha_stops_a_bad_learning_rate_early(lr_sparsity_sweep):
    bad = [row for row in lr_sparsity_sweep.rows if row["lr"] == 30.0]
    assert any(row["status"] == "stopped early" and row["epochs"] < 3 for row in bad), lr_sparsity_sweep.rows


def test_sparse_trials_keep_their_masks(lr_sparsity_sweep):
    sparse = [row for row in lr_sparsity_sweep.rows if row["sparsity"] == 0.5 and row["lr"] == 0.001]
    assert sparse and abs(sparse[0]["sparsity_measured"] - 0.5) < 1e-3


def test_bad_search_spaces_are_refused():
    base = get_task("classify").default_config()
    with pytest.raises(RaycvError, match="invalid sparsity=1.5"):
        parse_space(["sparsity=grid:0.5,1.5"], base)
    with pytest.raises(RaycvError, match="unknown search-space key 'learning_rate'"):
        parse_space(["learning_rate=loguniform:1e-4:1e-1"], base)
    with pytest.raises(RaycvError, match="LOW < HIGH"):
        parse_space(["lr=loguniform:1e-1:1e-4"], base)


def test_task_options_are_swept_in_the_config_extra_and_checked_first():
    task = get_task("compress_ae")
    base = task.default_config().replace(model="factorized")
    space = parse_space(["rd_lambda=grid:0.003,0.01", "lr=grid:0.001"], base, task.name)
    assert space == {"rd_lambda": {"grid_search": [0.003, 0.01]}, "lr": {"grid_search": [0.001]}}
    trial = trial_config(base.to_dict(), {"rd_lambda": 0.003, "lr": 0.001})
    assert trial.extra["rd_lambda"] == 0.003 and trial.lr == 0.001 and trial.extra["loss"] == "mse"
    with pytest.raises(RaycvError, match="invalid rd_lambda=0: expected a weight > 0"):
        parse_space(["rd_lambda=grid:0.01,0"], base, task.name)
    with pytest.raises(RaycvError, match="unknown search-space key 'rd_lambda'"):
        parse_space(["rd_lambda=grid:0.01"], get_task("classify").default_config(), "classify")


def test_pareto_front_keeps_only_undominated_trials():
    points = [(0.5, 0.90), (0.7, 0.92), (0.9, 0.85), (0.7, 0.80), (0.5, 0.95)]
    assert pareto_front(points, higher_x_is_better=True) == [(0.5, 0.95), (0.7, 0.92), (0.9, 0.85)]
    latencies = [(3.0, 0.95), (1.0, 0.90), (2.0, 0.85), (1.0, 0.70)]
    assert pareto_front(latencies, higher_x_is_better=False) == [(1.0, 0.90), (3.0, 0.95)]
