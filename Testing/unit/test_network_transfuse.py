"""TransFuse3D (MICCAI 2021, ported to 3D): interface, gradients, odd sizes, export, paper size."""

import pytest
import torch

from BrainTumorFusionLib.networks import build
from BrainTumorFusionLib.networks.outputs import TransFuseAux
from Testing.unit.network_checks import (  # noqa: F401 (one_thread: autouse fixture)
    absent_channel_is_ignored,
    eval_deterministic,
    exports,
    forward_backward,
    one_thread,
    real_input,
)

# A CPU-sized variant from the same code: narrow CNN, 2-block ViT; 16^3 patches as in the paper.
COMPACT = dict(
    img_size=32,
    cnn_widths=(16, 32, 64),
    cnn_blocks=(1, 1, 1),
    vit_hidden_size=64,
    vit_depth=2,
    vit_heads=4,
    vit_mlp_dim=128,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build("transfuse", **COMPACT)


def check_aux(logits, aux, shape):
    assert logits.shape == shape
    assert isinstance(aux, TransFuseAux)
    assert len(aux.heads) == 3
    assert all(head.shape == shape for head in aux.heads)
    assert aux.heads[0] is logits  # the main head is the returned logits
    assert all(torch.isfinite(head).all() for head in aux.heads)
    # the three heads are different maps, not copies
    assert not torch.allclose(aux.heads[0], aux.heads[1])
    assert not torch.allclose(aux.heads[1], aux.heads[2])
    assert aux.weights == (0.5, 0.3, 0.2)


def test_training_forward_backward_on_real_crop(net):
    x = real_input((32, 32, 32))
    logits, aux = forward_backward(net, x)
    check_aux(logits, aux, (1, 3, 32, 32, 32))


def test_odd_size_is_padded_and_cropped_back(net):
    x = real_input((33, 37, 41))
    logits, aux = forward_backward(net, x)
    check_aux(logits, aux, (1, 3, 33, 37, 41))
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (1, 3, 33, 37, 41)


def test_deep_supervision_weights_are_module_constants(net):
    assert type(net).deep_supervision_weights == (0.5, 0.3, 0.2)
    assert sum(net.deep_supervision_weights) == pytest.approx(1.0)


def test_positional_embedding_interpolates_to_other_sizes(net):
    transformer = net.transformer
    assert tuple(transformer.pos_embed.shape[2:]) == (2, 2, 2)  # built for 32^3 / 16
    assert transformer.position_embedding((2, 2, 2)) is transformer.pos_embed
    assert transformer.position_embedding((4, 3, 5)).shape == (1, 64, 4, 3, 5)
    net.eval()
    with torch.no_grad():
        assert net(real_input((64, 48, 80))).shape == (1, 3, 64, 48, 80)


def test_absent_modalities_are_ignored(net):
    x = real_input((32, 32, 32), batch=2)
    present = torch.tensor([[True, True, True, True], [True, False, True, True]])  # T1ce absent in sample 2
    assert absent_channel_is_ignored(net, x, present).shape == (2, 3, 32, 32, 32)
    logits, aux = forward_backward(net, x, present)
    check_aux(logits, aux, (2, 3, 32, 32, 32))


def test_eval_is_deterministic(net):
    out = eval_deterministic(net, real_input((32, 32, 32)))
    assert out.shape == (1, 3, 32, 32, 32)
    assert torch.isfinite(out).all()


def test_inference_exports(net):
    exports(net, real_input((32, 32, 32)))


def test_paper_size_default():
    """build("transfuse") is TransFuse-S in 3D: ResNet-34 widths/blocks to 1/16 + DeiT-S (384, 12 blocks, 6 heads).

    2D TransFuse-S has 26.3M parameters; in 3D every 3x3 kernel becomes 3x3x3 and the 16x16 patch
    embedding a 16x16x16 one (4 channels -> 384: 6.3M), which gives about 70M. Accepted: 60M to 80M.
    """
    net = build("transfuse")
    count = sum(p.numel() for p in net.parameters())
    assert 60e6 < count < 80e6, count
    assert len(net.transformer.blocks) == 12
    assert net.transformer.embed.out_channels == 384
    assert [len(stage) for stage in net.cnn.stages] == [3, 4, 6]
    net.eval()
    with torch.no_grad():
        assert net(real_input((32, 32, 32))).shape == (1, 3, 32, 32, 32)
