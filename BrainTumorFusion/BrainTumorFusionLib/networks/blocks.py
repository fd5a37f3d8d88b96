"""Small building blocks shared by the zoo's networks: padding to a size multiple, the modality mask,
3-tuples of spatial arguments and the learned 3D positional embedding of the transformer networks.

Everything here is shape-static (no data-dependent Python control flow) so the networks' inference
paths export with ``torch.export``: the only Python branches depend on tensor *shapes*, which export
specialises on.
"""

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

from ..modalities import MODALITIES


def pad_to_multiple(
    x: torch.Tensor, multiple: int, minimum: int = 0
) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Zero-pad the spatial dims of ``x`` (B, C, *spatial) at their end up to a multiple of ``multiple``,
    and to at least ``minimum`` (itself a multiple of ``multiple``).

    Returns the padded tensor and the original spatial size, for :func:`crop_to`. Zero is the
    background value of z-scored MRI (the z-scoring ignores, and keeps, the zero background).
    """
    spatial = tuple(int(s) for s in x.shape[2:])
    pad = []
    for size in reversed(spatial):  # F.pad lists the last dimension first
        pad += [0, max((-size) % multiple, minimum - size)]
    if any(pad):
        x = F.pad(x, pad)
    return x, spatial


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Crop the spatial dims of ``x`` back to ``spatial`` (undoes :func:`pad_to_multiple`)."""
    if tuple(x.shape[2:]) == tuple(spatial):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def present_mask(present: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The (B, n_modalities) bool mask of present modalities; ``None`` means all present.

    The mask is not validated against being empty (that would be data-dependent control flow);
    callers document that every sample needs at least one present modality.
    """
    batch = x.shape[0]
    if present is None:
        return torch.ones(batch, len(MODALITIES), dtype=torch.bool, device=x.device)
    present = present.to(device=x.device, dtype=torch.bool)
    if present.shape != (batch, len(MODALITIES)):
        raise ValueError(f"present must have shape ({batch}, {len(MODALITIES)}), got {tuple(present.shape)}")
    return present


def tuple3(value: Union[int, Sequence[int]], name: str) -> Tuple[int, ...]:
    """``ensure_tuple_rep(value, 3)`` with an error naming the argument (MONAI's does not say which one)."""
    try:
        return ensure_tuple_rep(value, 3)
    except ValueError:
        raise ValueError(f"{name} needs 1 or 3 values (D, H, W), got {value}") from None


def learned_position_grid(channels: int, grid: Sequence[int]) -> nn.Parameter:
    """A learned positional embedding kept as a 3D grid (1, channels, d, h, w), ViT-initialised.

    Kept as a grid (not a token list) so :func:`position_grid_for` can interpolate it to other token grids.
    """
    position = nn.Parameter(torch.zeros(1, channels, *grid))
    nn.init.trunc_normal_(position, std=0.02)
    return position


def position_grid_for(position: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """The (1, C, *grid) positional embedding for a token grid: ``position`` itself when it was built for
    that grid, else trilinearly interpolated (other crop sizes, sliding windows, padded odd sizes)."""
    if tuple(grid) == tuple(position.shape[2:]):
        return position
    return F.interpolate(position, size=tuple(grid), mode="trilinear", align_corners=False)
