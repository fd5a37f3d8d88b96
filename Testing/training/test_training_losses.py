"""Training.losses and the network recipes: Dice + 0.5 BCE on the regions, hafb's masked consistency, MISSU's
self-distillation, TransFuse's deep supervision, each network's recipe."""

import pytest
import torch
import torch.nn.functional as F

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.networks.outputs import HAFBAux, MISSUAux, TransFuseAux
from Testing.training.training_support import TINY_HAFB, one_thread  # noqa: F401
from Training.config import TrainConfig
from Training.losses import (
    SegmentationLoss,
    attention_map,
    hafb_masked_consistency,
    hafb_masked_view,
    missu_self_distillation,
)
from Training.network_recipes import RECIPES, aux_weight, recipe_of, uses_modality_dropout

pytestmark = pytest.mark.usefixtures("one_thread")


def target(shape=(2, 3, 8, 8, 8), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) > 0.7).float()


def by_hand(logits, y, alpha=1.0, beta=0.5):
    """Dice over the batch per region (smooth 1e-5), averaged over regions; mean BCE."""
    p = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    dice = 1 - (2 * (p * y).sum(dims) + 1e-5) / (p.sum(dims) + y.sum(dims) + 1e-5)
    return alpha * dice.mean() + beta * F.binary_cross_entropy_with_logits(logits, y)


def test_segmentation_loss_is_dice_plus_half_bce():
    y = target()
    logits = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    total, parts = SegmentationLoss()(logits, y)
    torch.testing.assert_close(total, by_hand(logits, y))
    assert parts["total"] == pytest.approx(parts["dice"] + 0.5 * parts["bce"], rel=1e-6)
    assert "aux" not in parts
    # Perfect logits give ~0; inverted ones a large loss.
    perfect, _ = SegmentationLoss()(40 * (2 * y - 1), y)
    inverted, _ = SegmentationLoss()(-40 * (2 * y - 1), y)
    assert perfect < 1e-4 and inverted > 10


def test_hafb_consistency_is_one_minus_cosine_over_present_modalities():
    clean = torch.randn(2, 4, 8, 2, 2, 2)
    present = torch.tensor([[True] * 4, [True, False, True, True]])
    same = HAFBAux(modality_features=torch.cat([clean, clean]), present=torch.cat([present, present]))
    assert hafb_masked_consistency(same, 2) == pytest.approx(0.0, abs=1e-6)
    opposite = HAFBAux(modality_features=torch.cat([clean, -clean]), present=torch.cat([present, present]))
    assert hafb_masked_consistency(opposite, 2) == pytest.approx(2.0, abs=1e-6)
    # An absent modality does not count, whatever its features.
    masked = clean.clone()
    masked[1, 1] = -clean[1, 1]
    ignored = HAFBAux(modality_features=torch.cat([clean, masked]), present=torch.cat([present, present]))
    assert hafb_masked_consistency(ignored, 2) == pytest.approx(0.0, abs=1e-6)
    # No masked view in the batch: no term.
    assert hafb_masked_consistency(HAFBAux(modality_features=clean, present=present), 2) is None


def test_consistency_trains_the_masked_branch_only():
    features = torch.randn(4, 4, 8, 2, 2, 2, requires_grad=True)
    aux = HAFBAux(modality_features=features, present=torch.ones(4, 4, dtype=torch.bool))
    hafb_masked_consistency(aux, 2).backward()
    assert features.grad[:2].abs().sum() == 0 and features.grad[2:].abs().sum() > 0


def test_auxiliary_term_is_weighted_and_absent_without_one():
    y = target()
    logits = torch.randn(y.shape)
    plain, _ = SegmentationLoss()(logits, y)
    aux = MISSUAux(distillation_pairs=[(torch.ones(1), torch.zeros(1))])
    without, parts = SegmentationLoss(aux_weight=0.3)(logits, y, aux)
    assert torch.equal(plain, without) and "aux" not in parts
    term = lambda aux, n: sum((a - b).square().mean() for a, b in aux.distillation_pairs)  # noqa: E731
    plugged, parts = SegmentationLoss(aux_term=term, aux_weight=0.3)(logits, y, aux)
    assert parts["aux"] == pytest.approx(1.0) and plugged.item() == pytest.approx(plain.item() + 0.3)


def test_recipe_weights():
    def weight(network, ssl_weight=None):
        return aux_weight(TrainConfig(network=network, ssl_weight=ssl_weight))

    assert weight("hafb") == 0.1 and weight("missu") == 0.3 and weight("transfuse") == 0.0
    assert weight("missu", 0.05) == 0.05 and weight("segresnet", 0.1) == 0.0  # no term, no weight


def test_every_network_of_the_library_has_a_recipe_and_only_mask_takers_drop_modalities():
    assert set(RECIPES) <= set(networks.available())
    shipped = {entry.network for entry in Catalogue.load().entries.values()}
    assert shipped <= set(RECIPES)  # every shipped model's network has one
    for name, recipe in RECIPES.items():
        takes_mask = "present" in networks.registry.network_class(name).forward.__code__.co_varnames
        assert takes_mask or not recipe.handles_missing_modalities, name
    assert uses_modality_dropout(TrainConfig(network="hafb"))
    assert not uses_modality_dropout(TrainConfig(network="hafb", modality_dropout=False))
    assert not uses_modality_dropout(TrainConfig(network="segresnet"))
    with pytest.raises(ValueError, match="takes the modality mask"):
        uses_modality_dropout(TrainConfig(network="segresnet", modality_dropout=True))
    with pytest.raises(KeyError, match="Available"):
        recipe_of("nonexistent")


def test_missu_attention_map_is_normalised_sum_of_absolute_channels():
    features = torch.randn(2, 5, 3, 4, 2)
    a = attention_map(features)
    expected = features.abs().sum(1).flatten(1)
    torch.testing.assert_close(a, expected / expected.norm(dim=1, keepdim=True))
    assert a.shape == (2, 24)


def test_missu_self_distillation_sums_squared_distances_over_levels_and_trains_both_sides():
    skips = [torch.randn(2, c, s, s, s, requires_grad=True) for c, s in ((4, 8), (8, 4), (16, 2))]
    fused = [torch.randn(f.shape, requires_grad=True) for f in skips]
    value = missu_self_distillation(MISSUAux(distillation_pairs=list(zip(skips, fused))), 2)
    by_levels = sum((attention_map(a) - attention_map(b)).square().sum(1).mean() for a, b in zip(skips, fused))
    torch.testing.assert_close(value, by_levels)
    value.backward()
    # Not detached: the multi-scale-fusion teacher learns from this term too (it has no other).
    assert all(t.grad.abs().sum() > 0 for t in skips + fused)
    same = MISSUAux(distillation_pairs=[(f, 3 * f) for f in skips])  # same attention map up to scale
    assert missu_self_distillation(same, 2).item() == pytest.approx(0.0, abs=1e-10)
    assert missu_self_distillation(MISSUAux(), 2) is None


def test_missu_network_training_adds_the_weighted_distillation_and_reaches_the_msf_blocks():
    torch.manual_seed(0)
    net = networks.build("missu", widths=(4, 8, 8, 16), hidden_size=32, num_heads=4, mlp_dim=32, num_layers=1,
                         img_size=32).train()
    logits, aux = net(torch.randn(1, 4, 32, 32, 32))
    y = target((1, 3, 32, 32, 32))
    recipe = recipe_of("missu")
    total, parts = SegmentationLoss(aux_term=recipe.aux_term, aux_weight=recipe.aux_weight)(logits, y, aux)
    assert parts["total"] == pytest.approx(parts["dice"] + 0.5 * parts["bce"] + 0.3 * parts["aux"], rel=1e-5)
    total.backward()
    msf = [p.grad for name, p in net.named_parameters() if name.startswith("msf.")]
    assert msf and all(g is not None and g.abs().sum() > 0 for g in msf)


def test_transfuse_deep_supervision_weights_the_three_heads():
    y = target()
    heads = [torch.randn(y.shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    aux = TransFuseAux(heads=heads, weights=(0.5, 0.3, 0.2))
    total, parts = SegmentationLoss(deep_supervision=recipe_of("transfuse").deep_supervision)(heads[0], y, aux)
    expected = sum(w * by_hand(h, y) for w, h in zip((0.5, 0.3, 0.2), heads))
    torch.testing.assert_close(total, expected)
    assert parts["dice"] + 0.5 * parts["bce"] == pytest.approx(by_hand(heads[0], y).item(), rel=1e-5)


def test_masked_view_runs_the_hafb_encoders_and_feeds_the_consistency_term():
    torch.manual_seed(0)
    net = networks.build("hafb", **TINY_HAFB).train()
    x = torch.randn(2, 4, 32, 32, 32)
    masked = x.clone()
    masked[:, :, 8:18, 8:18, 8:18] = 0
    present = torch.tensor([[True] * 4, [False, True, True, True]])
    logits, aux = net(x, present)
    extended = hafb_masked_view(net, aux, masked)
    assert extended.modality_features.shape == (4, 4, 16, 2, 2, 2)
    assert torch.equal(extended.present, torch.cat([present, present]))
    # The encoder-only path gives the features a full forward pass of the masked input reports.
    with torch.no_grad():
        _, full = net(masked, present)
    torch.testing.assert_close(extended.modality_features[2:], full.modality_features)
    total, parts = SegmentationLoss(aux_term=hafb_masked_consistency, aux_weight=0.1)(
        logits, target((2, 3, 32, 32, 32)), extended)
    assert 0 < parts["aux"] < 2
    assert parts["total"] == pytest.approx(parts["dice"] + 0.5 * parts["bce"] + 0.1 * parts["aux"], rel=1e-5)
    total.backward()
    assert all(p.grad is not None for p in net.parameters())
