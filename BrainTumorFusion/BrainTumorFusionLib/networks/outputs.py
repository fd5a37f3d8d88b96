"""Auxiliary training-mode outputs of the zoo's networks: one small dataclass per network.

In training mode every network returns ``(logits, aux)``; ``aux`` carries what the network's paper
needs for its extra loss terms, which are computed by the training code, not by the network. Fields
are tensors or (nested) lists/tuples of tensors so generic code can walk them. To add a network's
auxiliary output, add one dataclass below (keep them independent; no inheritance is needed).
"""

from dataclasses import dataclass, field
from typing import List, Tuple

import torch


@dataclass
class HAFBAux:
    """HAFB-Net (JBHI 2022) training outputs for the masked-region consistency self-supervised loss.

    modality_features: bottleneck features of each modality encoder, before fusion,
        shape (B, 4, C, d, h, w) in MODALITIES order (absent modalities included, as computed from
        whatever their channel held; mask them with ``present``).
    present: (B, 4) bool, the modality mask the forward pass used (all True when none was given).
    """

    modality_features: torch.Tensor
    present: torch.Tensor


@dataclass
class MISSUAux:
    """MISSU (arXiv 2206.00902) training outputs for self-distillation.

    distillation_pairs: one ``(skip, fused)`` pair per skip level, finest first; ``skip`` is the encoder
        feature the decoder uses, ``fused`` the multi-scale-fusion (MSF) teacher computed from it
        (same shape). The MSF modules exist only for this loss and never run in eval mode.
    """

    distillation_pairs: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class CMGAux:
    """Cross-modality guided grader (arXiv 2401.09029) training outputs.

    primary_logits: (B, 2) grade logits (HGG, LGG) of the T1ce-only primary head, for its own
        classification loss next to the fused head's.
    """

    primary_logits: torch.Tensor


@dataclass
class TransFuseAux:
    """TransFuse (MICCAI 2021) training outputs for deep supervision.

    heads: three region-logit maps (B, 3, D, H, W), each upsampled to the input size, in the order
        (final decoder path at 1/4, transformer branch upsampled to 1/4, BiFusion map at 1/16), as in
        the authors' code; ``heads[0]`` is the main logits the network returns.
    weights: the paper's loss weights for ``heads``, in the same order (0.5, 0.3, 0.2).
    """

    heads: List[torch.Tensor] = field(default_factory=list)
    weights: Tuple[float, ...] = (0.5, 0.3, 0.2)


@dataclass
class SwinFUSEAux:
    """SwinFUSE (arXiv 2405.12781) training outputs for the domain-invariance and SSL losses.

    view_a: joint multi-modal patch embedding (B, C, D/2, H/2, W/2), one of the two DIM views; sizes
        here are those of the input after internal padding (multiples of 32, at least 64).
    view_b: modality-agnostic patch embedding (same shape): the shared single-channel embedding of each
        present modality, averaged; the other DIM view.
    fused: DIM output (same shape), the average of the two cross-attended views, fed to the Swin stages.
    bottleneck: deepest Swin features (B, 16C, D/32, H/32, W/32), e.g. for density matching.
    """

    view_a: torch.Tensor
    view_b: torch.Tensor
    fused: torch.Tensor
    bottleneck: torch.Tensor
