"""Losses: Dice + BCE on the three nested regions, plus a per-network auxiliary term.

total = alpha * Dice + beta * BCE (+ aux_weight * auxiliary term of the network, when one is registered).

Auxiliary terms live in AUX_LOSSES, name -> function(aux, n_clean) -> scalar tensor, where `aux` is the
network's training-mode output dataclass (BrainTumorFusionLib.networks.outputs) and `n_clean` the number of
samples of the batch that are the clean training samples (the loop may append extra views after them, see
MASKED_VIEW). Networks without an entry, or an `aux` of an unexpected type, add nothing. DEFAULT_AUX_WEIGHTS
holds each recipe's weight (hafb 0.1, missu 0.3).

Deep supervision (TransFuse) is not an extra term: when the aux output carries weighted heads, the Dice + BCE
term itself is the weighted sum over the heads (0.5 / 0.3 / 0.2), see `supervised_heads`.
SwinFUSE's self-supervised losses belong to pretraining (Training.pretrain), not to this loss.
"""

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from BrainTumorFusionLib.networks.outputs import HAFBAux, MISSUAux, TransFuseAux


def hafb_masked_consistency(aux, n_clean):
    """HAFB-Net's masked-region consistency: 1 - cosine similarity between the bottleneck features of each
    modality encoder for the masked input and for the clean input.

    The features hold the clean samples first and their masked copies after (n_clean each; see
    hafb_masked_view). The similarity is
    taken over the channel axis at every bottleneck voxel, averaged over voxels and over the modalities that
    are present. The clean features are the target (no gradient flows into them from this term), so the term
    teaches the encoders to infer the hidden region from its context rather than pulling clean features
    towards those of damaged inputs.
    """
    if not isinstance(aux, HAFBAux):
        return None
    features = aux.modality_features.float()
    if features.shape[0] < 2 * n_clean:
        return None  # no masked view in this batch
    clean, masked = features[:n_clean].detach(), features[n_clean:2 * n_clean]
    similarity = F.cosine_similarity(masked, clean, dim=2, eps=1e-6)  # (B, 4, d, h, w)
    per_modality = similarity.flatten(2).mean(2)  # (B, 4)
    present = aux.present[:n_clean].to(per_modality.dtype)
    return 1.0 - (per_modality * present).sum() / present.sum().clamp_min(1.0)


def hafb_masked_view(network, aux, masked):
    """HAFBAux of the clean batch with the encoder features of its masked copy appended (batch 2B).

    Only the four modality encoders run on the masked input (about 40 % of a full forward pass at the compact
    size): the decoder output of a masked input is not used by any loss.
    """
    from dataclasses import replace

    from BrainTumorFusionLib.networks.blocks import pad_to_multiple

    padded, _ = pad_to_multiple(masked, network.stride)
    features = torch.stack([encoder(padded[:, i:i + 1])[-1] for i, encoder in enumerate(network.encoders)], dim=1)
    return replace(aux, modality_features=torch.cat([aux.modality_features, features]),
                   present=torch.cat([aux.present, aux.present]))


def attention_map(features):
    """MISSU's attention map of a feature map (B, C, ...): A(F) = sum_c |F_c|, flattened, L2-normalised (B, N)."""
    return F.normalize(features.float().abs().sum(1).flatten(1), dim=1, eps=1e-8)


def missu_self_distillation(aux, n_clean):
    """MISSU's self-distillation: sum over the skip levels of ||A(skip) - A(fused)||^2, averaged over samples.

    The fused (multi-scale-fusion) branch is NOT detached: the MSF blocks exist only for this term, so a
    detached teacher would stay at its random initialisation. With gradients on both sides the MSF blocks
    learn a multi-scale view whose spatial attention the skips are pulled towards, as in the paper's
    end-to-end training; the blocks are dropped at inference.
    """
    if not isinstance(aux, MISSUAux) or not aux.distillation_pairs:
        return None
    return sum((attention_map(skip[:n_clean]) - attention_map(fused[:n_clean])).square().sum(1).mean()
               for skip, fused in aux.distillation_pairs)


def supervised_heads(logits, aux):
    """[(weight, logits)] that the Dice + BCE term covers: TransFuse's weighted heads, else the logits alone."""
    if isinstance(aux, TransFuseAux) and aux.heads:
        return list(zip(aux.weights, aux.heads))
    return [(1.0, logits)]


AUX_LOSSES = {"hafb": hafb_masked_consistency, "missu": missu_self_distillation}
DEFAULT_AUX_WEIGHTS = {"hafb": 0.1, "missu": 0.3}


def aux_weight(network, weight=None):
    """The weight of `network`'s auxiliary term: `weight` when given, else its recipe's; 0 without a term."""
    if network not in AUX_LOSSES:
        return 0.0
    return DEFAULT_AUX_WEIGHTS.get(network, 0.0) if weight is None else float(weight)
# Networks whose auxiliary term needs a masked copy of the batch (a cube zeroed in every modality): name ->
# function(network, aux of the clean batch, masked input) -> aux extended with what the term needs from the
# masked input. It runs inside the training forward pass (so inside DistributedDataParallel's forward).
MASKED_VIEW = {"hafb": hafb_masked_view}


class SegmentationLoss(torch.nn.Module):
    """alpha * Dice + beta * BCE on region logits (B, 3, ...) against binary regions (B, 3, ...), plus the
    network's auxiliary term (AUX_LOSSES) weighted by aux_weight."""

    def __init__(self, network, alpha=1.0, beta=0.5, aux_weight=0.0):
        super().__init__()
        self.network, self.alpha, self.beta, self.aux_weight = network, alpha, beta, aux_weight
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits, target, aux=None, n_clean=None):
        """(total, parts): parts are detached floats for logging (dice, bce, aux, total)."""
        n_clean = logits.shape[0] if n_clean is None else n_clean
        target = target[:n_clean].float()
        total, parts = 0.0, {}
        for i, (weight, head) in enumerate(supervised_heads(logits, aux)):
            head = head[:n_clean].float()
            dice, bce = self.dice(head, target), self.bce(head, target)
            total = total + weight * (self.alpha * dice + self.beta * bce)
            if i == 0:  # the main output's terms, for the logs
                parts = {"dice": float(dice.detach()), "bce": float(bce.detach())}
        term = AUX_LOSSES.get(self.network)
        if term is not None and aux is not None and self.aux_weight:
            value = term(aux, n_clean)
            if value is not None:
                total = total + self.aux_weight * value
                parts["aux"] = float(value.detach())
        parts["total"] = float(total.detach())
        return total, parts
