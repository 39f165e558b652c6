import pytest
import torch

from raycv.config import TrainConfig
from raycv.errors import RaycvError
from raycv.models.common import count_parameters
from raycv.tasks import get_task
from raycv.train import build_on_device

META = {"classes": [str(i) for i in range(10)], "image_size": [32, 32]}


def test_book_parameter_counts():
    task = get_task("classify")
    assert count_parameters(task.build_model(TrainConfig(model="vgg11_bn"), META)) == 9_231_114
    assert count_parameters(task.build_model(TrainConfig(model="resnet18"), META)) == 11_173_962


def test_models_map_32px_images_to_class_logits():
    task = get_task("classify")
    for name in ("vgg11_bn", "resnet18"):
        model = task.build_model(TrainConfig(model=name, width=0.25), META).eval()
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_channels_last_is_on_gpu_only_unless_a_task_opts_in_on_cpu():
    task, cpu = get_task("classify"), torch.device("cpu")
    cfg = TrainConfig(model="resnet18", width=0.25)
    first_conv = lambda model: next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight  # noqa: E731
    assert first_conv(build_on_device(task, cfg, META, cpu)).is_contiguous()
    opted_in = build_on_device(task, cfg.replace(channels_last="on"), META, cpu)
    assert first_conv(opted_in).is_contiguous(memory_format=torch.channels_last)
    assert not first_conv(opted_in).is_contiguous()
    with pytest.raises(RaycvError, match="invalid channels_last='yes': expected one of auto, on, off"):
        cfg.replace(channels_last="yes").validate()
