"""The generic Ray Train loop on the classify task: DDP, checkpoints, artefacts, faults and resume.

Fits are the slow part of the suite (~20-40 s each on 2 cores), so one fit serves several checks.
"""

from __future__ import annotations

import os

import pytest
import torch

from raycv import checkpoint
from raycv.inference import evaluate_checkpoint
from raycv.synth import synthesize
from raycv.tasks import get_task
from raycv.train import fit

from conftest import TINY


def test_two_worker_ddp_loss_falls(ddp_run):
    losses = [row["train_loss"] for row in ddp_run.history]
    assert [row["epoch"] for row in ddp_run.history] == [1, 2, 3, 4]
    assert all(row["workers"] == 2 for row in ddp_run.history)
    assert losses == sorted(losses, reverse=True), losses
    assert losses[-1] < 2.0 < losses[0], losses  # chance level is ln(10) = 2.30
    assert ddp_run.history[-1]["val_accuracy"] > 0.25, ddp_run.history  # chance is 0.10


def test_run_artefacts(ddp_run):
    files = set(os.listdir(ddp_run.run_dir))
    assert {"config.json", "metrics.csv", "curves.png", "tensorboard", "best"} <= files
    with open(os.path.join(ddp_run.run_dir, "metrics.csv")) as file:
        assert len(file.read().splitlines()) == 5
    assert any(name.startswith("events.out.tfevents")
               for name in os.listdir(os.path.join(ddp_run.run_dir, "tensorboard")))
    # best-k: keep_checkpoints=2 (the latest is kept too, for resuming)
    assert 2 <= sum(name.startswith("checkpoint_") for name in files) <= 3


def test_checkpoint_loads_weights_only_and_evaluates(ddp_run, classify_data):
    for name in (checkpoint.MODEL_FILE, checkpoint.STATE_FILE):
        torch.load(os.path.join(ddp_run.best_checkpoint, name), weights_only=True)
    loaded = checkpoint.load_model(ddp_run.best_checkpoint, "classify")
    assert loaded.meta["epoch"] == ddp_run.best_metrics["epoch"]
    metrics = evaluate_checkpoint(ddp_run.best_checkpoint, classify_data)
    assert metrics["samples"] == 256
    # the same weights on the whole val split agree with what the two workers measured on halves
    assert abs(metrics["accuracy"] - ddp_run.best_metrics["val_accuracy"]) < 0.03


def test_stopped_run_resumes_under_another_amp_and_a_crash_is_retried(ray_session, workdir):
    """Three fault paths in two fits: a run stopped after epoch 1 (no retries) resumes at epoch 2 from its
    checkpoint, under fp16 where it was saved with a disabled (empty) GradScaler, which must then start
    afresh; a worker crash at epoch 3 of the resumed run is retried through FailureConfig from epoch 2's
    checkpoint. (A small set of its own: fp16 autocast is slow on a CPU, and only the epochs matter here.)"""
    task = get_task("classify")
    data = str(workdir / "classify-small")
    synthesize(task, data, {"train": 256, "val": 64}, seed=5)
    cfg = task.default_config().replace(epochs=3, workers=1, storage=str(workdir / "runs"), name="resume",
                                        **{**TINY, "width": 0.125})
    with pytest.raises(Exception, match="injected fault"):
        fit(task, cfg.replace(amp="off", max_failures=0, fail_at_epoch=2), data)
    result = fit(task, cfg.replace(amp="fp16", max_failures=1, fail_at_epoch=3), data)  # same name
    assert result.resumed_at == [2, 3]
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in result.history)


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_grad_clip_bounds_the_step_of_plain_sgd(grad_clip):
    from raycv.config import TrainConfig
    from raycv.errors import RaycvError
    from raycv.train import train_step

    class SquaredOutput:  # the one piece of a Task train_step calls when augmentation is off
        def loss(self, model, batch, cfg):
            return 1000 * model(batch["x"]).pow(2).sum()

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = TrainConfig(augment=False, grad_clip=grad_clip)
    train_step(SquaredOutput(), model, {"x": torch.randn(16, 8)}, cfg, optimizer, scheduler,
               torch.amp.GradScaler("cpu", enabled=False), None)
    moved = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
    # lr 1: the step is the gradient, whose norm is in the thousands unless clipped
    assert moved == pytest.approx(0.5, rel=1e-4) if grad_clip else moved > 100
    with pytest.raises(RaycvError, match=r"invalid grad_clip=-1.0: expected a norm >= 0"):
        TrainConfig(grad_clip=-1.0).validate()
