"""SwinFUSE (arXiv 2405.12781): interface, DIM, SSL pretraining heads, odd sizes, export, paper size."""

from contextlib import contextmanager

import pytest
import torch

from BrainTumorFusionLib.networks import build
from BrainTumorFusionLib.networks.outputs import SwinFUSEAux
from BrainTumorFusionLib.networks.swinfuse import (
    DomainInvarianceModule,
    SwinFUSEPretrainOutput,
    _from_windows,
    _to_windows,
)
from Testing.unit.network_checks import (  # noqa: F401 (one_thread: autouse fixture)
    absent_channel_is_ignored,
    eval_deterministic,
    exports,
    forward_backward,
    one_thread,
    real_input,
)

# A CPU-sized variant from the same code: feature size 12 (paper 48), one Swin block per stage (paper 2),
# Swin window 4 (paper 7; 4 tiles the 32^3 token grid of a 64^3 crop without padding).
COMPACT = dict(feature_size=12, depths=(1, 1, 1, 1), window_size=4)
SSL_PREFIX = "ssl."  # the pretraining heads; the segmentation forward does not use them


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build("swinfuse", **COMPACT)


@contextmanager
def ssl_heads_frozen(net):
    """Exclude the SSL heads (by name) from the every-parameter-gets-a-gradient check of segmentation."""
    heads = [p for name, p in net.named_parameters() if name.startswith(SSL_PREFIX)]
    assert heads, "expected SSL head parameters"
    for p in heads:
        p.requires_grad_(False)
    try:
        yield heads
    finally:
        for p in heads:
            p.requires_grad_(True)


def check_aux(aux, batch, padded, feature_size=12):
    assert isinstance(aux, SwinFUSEAux)
    grid = tuple(s // 2 for s in padded)
    for view in (aux.view_a, aux.view_b, aux.fused):
        assert view.shape == (batch, feature_size, *grid)
    assert aux.bottleneck.shape == (batch, 16 * feature_size, *(s // 32 for s in padded))
    # the two views differ, and the DIM output is neither of them
    assert not torch.allclose(aux.view_a, aux.view_b)
    assert not torch.allclose(aux.fused, aux.view_a)
    assert not torch.allclose(aux.fused, aux.view_b)


def test_training_forward_backward_on_real_crop(net):
    x = real_input((64, 64, 64))
    with ssl_heads_frozen(net) as heads:
        logits, aux = forward_backward(net, x)
        assert all(p.grad is None for p in heads)  # segmentation really does not reach the SSL heads
    assert logits.shape == (1, 3, 64, 64, 64)
    assert torch.isfinite(logits).all()
    check_aux(aux, 1, (64, 64, 64))


def test_odd_size_is_padded_and_cropped_back(net):
    x = real_input((33, 37, 41))  # padded internally to 64^3
    with ssl_heads_frozen(net):
        logits, aux = forward_backward(net, x)
    assert logits.shape == (1, 3, 33, 37, 41)
    check_aux(aux, 1, (64, 64, 64))
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (1, 3, 33, 37, 41)
        assert net(real_input((32, 32, 32))).shape == (1, 3, 32, 32, 32)  # below 64: padded too


def test_absent_modalities_are_ignored(net):
    x = real_input((64, 64, 64), batch=2)
    present = torch.tensor([[True, True, True, True], [True, True, False, True]])  # T2 absent in sample 2
    assert absent_channel_is_ignored(net, x, present).shape == (2, 3, 64, 64, 64)


def test_view_b_is_the_modality_agnostic_average(net):
    """View B is the shared single-channel embedding averaged over the present modalities."""
    x = real_input((64, 64, 64))
    present = torch.tensor([[True, False, True, True]])
    net.train()
    with torch.no_grad():
        _, aux = net(x, present)
        expected = sum(net.modality_embed(x[:, m : m + 1]) for m in (0, 2, 3)) / 3
    torch.testing.assert_close(aux.view_b, expected, rtol=1e-5, atol=1e-5)


def test_dim_windows_and_bidirectionality():
    torch.manual_seed(0)
    a = torch.randn(2, 12, 8, 16, 8)
    assert torch.equal(_from_windows(_to_windows(a, 4), a.shape, 4), a)
    assert _to_windows(a, 4).shape == (2 * 2 * 4 * 2, 64, 12)
    dim = DomainInvarianceModule(12, 3, window_size=4).eval()
    b = torch.randn_like(a)
    with torch.no_grad():
        out = dim(a, b)
        assert out.shape == a.shape
        assert not torch.allclose(dim(a, b + 1.0), out)  # depends on view B
        assert not torch.allclose(dim(a + 1.0, b), out)  # and on view A
        # windows are independent: changing one window of B leaves other windows unchanged
        b2 = b.clone()
        b2[:, :, :4, :4, :4] += 1.0
        changed = (dim(a, b2) - out).abs().amax(dim=1)
    assert changed[:, :4, :4, :4].max() > 0
    assert changed[:, 4:].max() == 0 and changed[:, :, 4:].max() == 0 and changed[:, :, :, 4:].max() == 0


def test_eval_is_deterministic(net):
    out = eval_deterministic(net, real_input((64, 64, 64)))
    assert out.shape == (1, 3, 64, 64, 64)
    assert torch.isfinite(out).all()


def test_inference_exports(net):
    exports(net, real_input((64, 64, 64)))


def test_pretrain_forward_single_modality_views_and_ssl_gradients(net):
    """Pretraining takes one modality as a 1-channel view; every SSL head and the encoder get gradients."""
    views = torch.from_numpy(real_input((40, 40, 40)).numpy()[0, :2, None])  # T1 and T1ce as 2 single views
    net.train()
    net.zero_grad(set_to_none=True)
    out = net.pretrain_forward(views)
    assert isinstance(out, SwinFUSEPretrainOutput)
    assert out.rotation_logits.shape == (2, 4)
    assert out.projection.shape == (2, 128)
    assert out.reconstruction.shape == views.shape  # (2, 1, 40, 40, 40), padded inside, cropped back
    assert out.deepest.shape == (2, 16 * 12, 2, 2, 2)  # 40^3 padded to 64^3, then 1/32
    loss = (
        torch.nn.functional.cross_entropy(out.rotation_logits, torch.tensor([0, 2]))
        + out.projection.square().mean()
        + (out.reconstruction - views).abs().mean()
    )
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    ssl_missing = [n for n, g in grads.items() if n.startswith(SSL_PREFIX) and (g is None or not g.abs().sum() > 0)]
    assert not ssl_missing, ssl_missing
    encoder = ("backbone.swinViT.", "modality_embed.", "dim.")
    encoder_missing = [n for n, g in grads.items() if n.startswith(encoder) and g is None]
    assert not encoder_missing, encoder_missing
    # the segmentation decoder takes no part in pretraining
    assert grads["backbone.out.conv.conv.weight"] is None


def test_pretrain_forward_accepts_four_channels(net):
    net.eval()
    with torch.no_grad():
        out = net.pretrain_forward(real_input((64, 64, 64)))
    assert out.reconstruction.shape == (1, 4, 64, 64, 64)
    with pytest.raises(ValueError):
        net.pretrain_forward(torch.zeros(1, 2, 64, 64, 64))


def test_paper_size_default():
    """build("swinfuse") is the paper's model: Swin UNETR with feature size 48, depths (2, 2, 2, 2), heads
    (3, 6, 12, 24), window 7. MONAI's Swin UNETR-48 with 4 inputs and 3 outputs has 62.19M parameters
    (the Swin UNETR paper reports 62.2M); the DIM adds ~19k, the SSL heads ~11.3M (mostly the
    reconstruction head). Accepted: backbone 61.5M-63M, total 70M-78M.
    """
    net = build("swinfuse")
    backbone = sum(p.numel() for p in net.backbone.parameters())
    total = sum(p.numel() for p in net.parameters())
    assert 61.5e6 < backbone < 63e6, backbone
    assert 70e6 < total < 78e6, total
    assert net.backbone.swinViT.embed_dim == 48
    assert net.modality_embed.proj.out_channels == 48
