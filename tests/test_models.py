import torch

from raycv.config import TrainConfig
from raycv.models.common import count_parameters
from raycv.tasks import get_task

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
