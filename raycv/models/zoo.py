"""torchvision's classification model zoo by name, with local pretrained weights and a replaceable head.

raycv never downloads: `build_zoo_classifier` makes the architecture with random weights, and a user's
--pretrained file (torchvision's own .pth, or a raycv checkpoint) is loaded by raycv.checkpoint.
Names raycv's own networks also use (resnet18, vgg11_bn: the book's CIFAR networks) are reached here
with a "torchvision." prefix.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

ZOO_PREFIX = "torchvision."
# ImageNet statistics: the normalisation torchvision's pretrained weights were trained with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ZOO_IMAGE_SIZE = 224  # the resolution torchvision's classification weights were trained at
# Families whose training-mode output is a tuple of auxiliary heads unless told otherwise.
AUX_LOGITS_FAMILIES = ("googlenet", "inception_v3")


def zoo_model_names() -> list[str]:
    """torchvision's classification architectures, sorted."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def zoo_name(model: str, own_names: tuple[str, ...]) -> str | None:
    """The torchvision architecture `model` names, or None when it names none (or one of raycv's own
    networks, `own_names`, which take precedence over torchvision's of the same name)."""
    if model in own_names:
        return None
    name = model.removeprefix(ZOO_PREFIX)
    return name if name in zoo_model_names() else None


def closest_names(model: str, candidates: list[str], count: int = 4) -> list[str]:
    return difflib.get_close_matches(model.removeprefix(ZOO_PREFIX), candidates, n=count, cutoff=0.5)


def build_zoo_classifier(name: str, num_classes: int, image_size: int) -> nn.Module:
    """torchvision's `name` with random weights and `num_classes` outputs."""
    from torchvision import models

    options: dict = {"num_classes": num_classes}
    if name in AUX_LOGITS_FAMILIES:
        options.update(aux_logits=False, init_weights=True)
    if name.startswith("vit_"):  # vision transformers fix their position embeddings to one input size
        options["image_size"] = image_size
    return models.get_model(name, weights=None, **options)


def parameter_count(build) -> int:
    """Parameters of the network `build()` makes, built on the meta device: no memory, no initialisation
    (the largest zoo models hold over 600 M)."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def classifier_head(model: nn.Module, num_classes: int) -> str:
    """The qualified name of `model`'s output layer: its last Linear (or 1x1 Conv2d, as SqueezeNet's)
    with `num_classes` outputs. Which attribute holds it differs by family (fc, classifier[-1], heads.head,
    classifier[1] ...), so it is found by shape rather than listed per family."""
    head = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_classes) or (
                isinstance(module, nn.Conv2d) and module.out_channels == num_classes and module.kernel_size == (1, 1)):
            head = name
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output layer with {num_classes} outputs")
    return head


# Backbones of the dense prediction networks (detect's detector, segment's UNet): where each family's feature
# stages end, at strides 2, 4, 8, 16 and 32. For ResNets the stages are named layers; MobileNetV3's are
# positions in `features`.
BACKBONE_STAGES = {
    "resnet18": ("relu", "layer1", "layer2", "layer3", "layer4"),
    "resnet34": ("relu", "layer1", "layer2", "layer3", "layer4"),
    "resnet50": ("relu", "layer1", "layer2", "layer3", "layer4"),
    "mobilenet_v3_large": ("features.1", "features.3", "features.6", "features.12", "features.16"),
}


class ZooBackbone(nn.Module):
    """A torchvision classification network's feature maps at strides 2, 4, 8, 16 and 32, as a list. The network
    is kept whole under `body`, without its pooling and classifier, so torchvision's own .pth files load into it
    by their own names (their classifier's weights are left over, see raycv.checkpoint.load_pretrained)."""

    def __init__(self, name: str):
        super().__init__()
        from torchvision import models
        from torchvision.models.feature_extraction import create_feature_extractor

        if name not in BACKBONE_STAGES:
            raise ValueError(f"no backbone stages known for {name}; known: {', '.join(BACKBONE_STAGES)}")
        network = models.get_model(name, weights=None)
        self.body = create_feature_extractor(network, return_nodes=list(BACKBONE_STAGES[name]))
        with torch.no_grad():
            probe = self.body(torch.zeros(1, 3, 64, 64))
        self.channels = [feature.shape[1] for feature in probe.values()]

    def forward(self, x):
        return list(self.body(x).values())
