"""Segmentation losses: Dice + BCE on the three nested regions, plus a network's auxiliary term.

total = alpha * Dice + beta * BCE (+ aux_weight * the network's auxiliary term). Which term a network has, its
weight, and whether the Dice + BCE term covers deep-supervision heads is said once, in its recipe
(Training.network_recipes); the functions here compute the terms. An auxiliary term is a function
(aux, n_clean) -> scalar tensor, where `aux` is the network's training-mode output dataclass
(BrainTumorFusionLib.networks.outputs) and `n_clean` the number of clean samples of the batch (a masked view may
follow them, see `hafb_masked_view`). SwinFUSE's self-supervised losses belong to pretraining.
"""

from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from BrainTumorFusionLib.networks.outputs import HAFBAux, MISSUAux


def hafb_masked_consistency(aux: HAFBAux, n_clean: int) -> Optional[torch.Tensor]:
    """HAFB-Net's masked-region consistency: 1 - cosine similarity between the bottleneck features of each
    modality encoder for the masked input and for the clean input.

    The features hold the clean samples first and their masked copies after (n_clean each; see
    hafb_masked_view). The similarity is taken over the channel axis at every bottleneck voxel, averaged over
    voxels and over the modalities that are present. The clean features are the target (no gradient flows into
    them from this term), so the term teaches the encoders to infer the hidden region from its context rather
    than pulling clean features towards those of damaged inputs.
    """
    features = aux.modality_features.float()
    if features.shape[0] < 2 * n_clean:
        return None  # no masked view in this batch
    clean, masked = features[:n_clean].detach(), features[n_clean:2 * n_clean]
    similarity = F.cosine_similarity(masked, clean, dim=2, eps=1e-6)  # (B, 4, d, h, w)
    per_modality = similarity.flatten(2).mean(2)  # (B, 4)
    present = aux.present[:n_clean].to(per_modality.dtype)
    return 1.0 - (per_modality * present).sum() / present.sum().clamp_min(1.0)


def hafb_masked_view(network: torch.nn.Module, aux: HAFBAux, masked: torch.Tensor) -> HAFBAux:
    """HAFBAux of the clean batch with the encoder features of its masked copy appended (batch 2B).

    Only the four modality encoders run on the masked input (about 40 % of a full forward pass at the compact
    size): the decoder output of a masked input is not used by any loss.
    """
    features = network.encode_modalities(masked)
    return replace(aux, modality_features=torch.cat([aux.modality_features, features]),
                   present=torch.cat([aux.present, aux.present]))


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """MISSU's attention map of a feature map (B, C, ...): A(F) = sum_c |F_c|, flattened, L2-normalised (B, N)."""
    return F.normalize(features.float().abs().sum(1).flatten(1), dim=1, eps=1e-8)


def missu_self_distillation(aux: MISSUAux, n_clean: int) -> Optional[torch.Tensor]:
    """MISSU's self-distillation: sum over the skip levels of ||A(skip) - A(fused)||^2, averaged over samples.

    The fused (multi-scale-fusion) branch is NOT detached: the MSF blocks exist only for this term, so a
    detached teacher would stay at its random initialisation. With gradients on both sides the MSF blocks
    learn a multi-scale view whose spatial attention the skips are pulled towards, as in the paper's
    end-to-end training; the blocks are dropped at inference.
    """
    if not aux.distillation_pairs:
        return None
    return sum((attention_map(skip[:n_clean]) - attention_map(fused[:n_clean])).square().sum(1).mean()
               for skip, fused in aux.distillation_pairs)


class SegmentationLoss(torch.nn.Module):
    """alpha * Dice + beta * BCE on region logits (B, 3, ...) against binary regions (B, 3, ...), summed over
    the deep-supervision heads when `deep_supervision` (weights from the aux output), plus `aux_term` weighted
    by `aux_weight`."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, aux_term=None, aux_weight: float = 0.0,
                 deep_supervision: bool = False):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.aux_term, self.aux_weight, self.deep_supervision = aux_term, aux_weight, deep_supervision
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits, target, aux=None, n_clean=None):
        """(total, parts): parts are detached floats for logging (dice, bce, aux, total)."""
        n_clean = logits.shape[0] if n_clean is None else n_clean
        target = target[:n_clean].float()
        heads = list(zip(aux.weights, aux.heads)) if self.deep_supervision and aux is not None else [(1.0, logits)]
        total, parts = 0.0, {}
        for i, (weight, head) in enumerate(heads):
            head = head[:n_clean].float()
            dice, bce = self.dice(head, target), self.bce(head, target)
            total = total + weight * (self.alpha * dice + self.beta * bce)
            if i == 0:  # the main output's terms, for the logs
                parts = {"dice": float(dice.detach()), "bce": float(bce.detach())}
        if self.aux_term is not None and self.aux_weight and aux is not None:
            value = self.aux_term(aux, n_clean)
            if value is not None:
                total = total + self.aux_weight * value
                parts["aux"] = float(value.detach())
        parts["total"] = float(total.detach())
        return total, parts
