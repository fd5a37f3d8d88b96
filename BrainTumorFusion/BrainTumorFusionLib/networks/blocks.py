"""Small building blocks shared by HAFB-Net, MISSU and the CMG grader.

Everything here is shape-static (no data-dependent Python control flow) so the networks' inference
paths export with ``torch.export``: the only Python branches depend on tensor *shapes*, which export
specialises on.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..modalities import MODALITIES


def pad_to_multiple(x: torch.Tensor, multiple: int) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Zero-pad the spatial dims of ``x`` (B, C, *spatial) at their end up to a multiple of ``multiple``.

    Returns the padded tensor and the original spatial size, for :func:`crop_to`. Zero is the
    background value of z-scored MRI (the z-scoring ignores, and keeps, the zero background).
    """
    spatial = tuple(int(s) for s in x.shape[2:])
    pad = []
    for size in reversed(spatial):  # F.pad lists the last dimension first
        pad += [0, (-size) % multiple]
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


def as_tuple3(value, name: str) -> Tuple[int, int, int]:
    """An int or a 3-sequence as a 3-tuple of ints (spatial sizes, strides)."""
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} needs 3 values (D, H, W), got {value}")
    return value
