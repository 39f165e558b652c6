"""Magnitude sparsity with persistent masks (torch.nn.utils.prune), usable on any task's model.

Pruning reparametrises each weight as `weight_orig * weight_mask`, so pruned weights stay exactly
zero through further training. Checkpoints store plain weights (the product); the masks are
recovered from the exact zeros when a sparse run resumes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from raycv.errors import RaycvError

PRUNABLE = (nn.Conv2d, nn.Linear)


def check_sparsity(amount: float) -> float:
    if not 0 <= amount < 1:
        raise RaycvError(f"invalid sparsity={amount!r}: expected a fraction in (0, 1), e.g. 0.7 (0 = dense)")
    return amount


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def apply_global_sparsity(model: nn.Module, amount: float) -> nn.Module:
    """Zero the `amount` fraction of smallest-magnitude weights across all conv and linear layers
    (global, so layers with many redundant weights give up more), keeping masks attached."""
    check_sparsity(amount)
    if amount > 0:
        prune.global_unstructured(prunable_weights(model), pruning_method=prune.L1Unstructured, amount=amount)
    return model


def restore_masks(model: nn.Module) -> nn.Module:
    """Re-attach masks to a sparse model loaded from plain weights: the zeros are the mask."""
    for module, name in prunable_weights(model):
        prune.custom_from_mask(module, name, mask=getattr(module, name).detach() != 0)
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a dense model of the same architecture loads: masked weights multiplied out."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("weight_orig"):
            prefix = key[: -len("weight_orig")]
            state[prefix + "weight"] = value * model.state_dict()[prefix + "weight_mask"]
        else:
            state[key] = value
    return state


def measured_sparsity(model: nn.Module) -> float:
    """The fraction of exactly-zero weights over the prunable layers."""
    weights = [getattr(module, name).detach() for module, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return float(sum((w == 0).sum().item() for w in weights) / max(total, 1))
