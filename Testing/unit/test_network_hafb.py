"""HAFB-Net (networks/hafb.py): shapes, gradients, missing modalities, determinism, export, paper size."""

import itertools

import pytest
import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.networks.outputs import HAFBAux
from Testing.unit.network_checks import (  # noqa: F401 (one_thread: autouse fixture)
    eval_deterministic,
    exports,
    forward_backward,
    one_thread,
    real_input,
)

COMPACT = dict(widths=(4, 8, 8, 16, 16))
SUBSETS = [s for n in range(1, 5) for s in itertools.combinations(range(4), n)]
ODD = (33, 37, 41)  # padded to 48^3 inside the network
NORMS = [{}, {"norm": ("instance", {"affine": True}), "fusion_norm": "instance"}]  # the paper's, the training preset's


def compact(**extra):
    torch.manual_seed(0)
    return networks.build("hafb", **COMPACT, **extra)


def test_forward_backward_on_a_real_crop():
    net = compact()
    x = real_input((32, 32, 32), batch=2)
    logits, aux = forward_backward(net, x)
    assert logits.shape == (2, 3, 32, 32, 32)
    assert isinstance(aux, HAFBAux)
    # Bottleneck features of each modality encoder: (B, 4, C, D/16, H/16, W/16).
    assert aux.modality_features.shape == (2, 4, 16, 2, 2, 2)
    assert aux.present.dtype == torch.bool and bool(aux.present.all())


def test_forward_backward_on_an_odd_size():
    net = compact()
    x = real_input(ODD)
    logits, aux = forward_backward(net, x)
    assert logits.shape == (1, 3) + ODD
    # Padded internally to 48^3, so the bottleneck is 3^3.
    assert aux.modality_features.shape == (1, 4, 16, 3, 3, 3)


def test_encode_modalities_is_the_training_aux_bottleneck():
    net = compact()
    x = real_input(ODD, batch=2)
    net.train()
    with torch.no_grad():
        _, aux = net(x)
        features = net.encode_modalities(x)
    assert features.shape == (2, 4, 16, 3, 3, 3)  # padded internally to 48^3 like forward
    assert torch.equal(features, aux.modality_features)
    # Each modality's slot depends on its own channel only (one encoder per modality, no fusion).
    changed = x.clone()
    changed[:, 2] = torch.flip(changed[:, 2], dims=(-1,))
    net.eval()
    with torch.no_grad():
        before, after = net.encode_modalities(x), net.encode_modalities(changed)
    assert torch.equal(before[:, [0, 1, 3]], after[:, [0, 1, 3]])
    assert not torch.allclose(before[:, 2], after[:, 2])


def test_training_with_missing_modalities_reports_the_mask():
    net = compact()
    present = torch.tensor([[False, True, False, True], [True, True, True, False]])
    logits, aux = forward_backward(net, real_input((32, 32, 32), batch=2), present)
    assert torch.equal(aux.present, present)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("norms", NORMS, ids=["batch", "instance"])
def test_every_modality_subset_gives_finite_output_that_ignores_absent_channels(norms):
    # All 15 non-empty subsets in one batch: the mask is applied per sample.
    net = compact(**norms).eval()
    present = torch.zeros(len(SUBSETS), 4, dtype=torch.bool)
    for row, subset in enumerate(SUBSETS):
        present[row, list(subset)] = True
    x = real_input((32, 32, 32)).expand(len(SUBSETS), -1, -1, -1, -1).clone()
    # Absent modalities are excluded from every fusion: their content must not matter.
    scrambled = torch.where(present[:, :, None, None, None], x, torch.randn_like(x) * 5)
    with torch.no_grad():
        out = net(x, present)
        out_scrambled = net(scrambled, present)
        single = net(x[:1], present[:1])
    assert out.shape == (len(SUBSETS), 3, 32, 32, 32)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_scrambled, out, rtol=1e-4, atol=1e-4)
    # Batched and single-sample results agree (no mixing across samples).
    torch.testing.assert_close(out[:1], single, rtol=1e-4, atol=1e-4)
    # The subsets really give different predictions (the mask is used).
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
    assert len(distinct) == len(SUBSETS)


@pytest.mark.parametrize("norms", NORMS, ids=["batch", "instance"])
def test_masking_is_per_sample(norms):
    net = compact(**norms).eval()
    x = real_input((32, 32, 32), batch=2)  # instance norm needs more than one voxel at 1/16
    present = torch.tensor([[True, False, False, True], [True, True, True, True]])
    with torch.no_grad():
        together = net(x, present)
        first = net(x[:1], present[:1])
        second = net(x[1:])  # None means all present
    torch.testing.assert_close(together[:1], first, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together[1:], second, rtol=1e-4, atol=1e-4)


def test_eval_is_deterministic_and_returns_logits():
    out = eval_deterministic(compact(), real_input((32, 32, 32)))
    assert out.shape == (1, 3, 32, 32, 32)


def test_inference_path_exports_at_an_odd_size():
    x = real_input(ODD)
    program = exports(compact(), x)
    assert program.module()(x).shape == (1, 3) + ODD


def test_build_without_arguments_is_the_paper_variant():
    net = networks.build("hafb")
    assert net.widths == (16, 32, 64, 128, 256)
    assert len(net.encoders) == 4 and len(net.fusions) == 4
    n_params = sum(p.numel() for p in net.parameters())
    print(f"hafb paper variant: {n_params / 1e6:.2f} M parameters")
    # Documented in hafb.py: about 32 M, most of it in the 3x3x3 HAFB attention convs.
    assert 28e6 < n_params < 36e6
    net.eval()
    with torch.no_grad():
        out = net(real_input((32, 32, 32)))
    assert out.shape == (1, 3, 32, 32, 32) and torch.isfinite(out).all()


def test_an_unknown_fusion_norm_is_refused():
    with pytest.raises(ValueError, match="fusion_norm"):
        compact(fusion_norm="group")
