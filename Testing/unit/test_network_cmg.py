"""Cross-modality guided grader (networks/cmg.py): shapes, gradients, guidance, attention, export, paper size."""

import pytest
import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.networks.cmg import DualAttention
from BrainTumorFusionLib.networks.outputs import CMGAux
from Testing.unit.network_checks import (  # noqa: F401 (one_thread: autouse fixture)
    eval_deterministic,
    exports,
    forward_backward,
    one_thread,
    real_input,
)

COMPACT = dict(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1))
T1CE, FLAIR = MODALITIES.index("t1ce"), MODALITIES.index("flair")


def compact():
    torch.manual_seed(0)
    return networks.build("cmg", **COMPACT)


@pytest.mark.parametrize("size", [(32, 64, 64), (33, 37, 41)])
def test_forward_backward_on_real_crops(size):
    net = compact()
    logits, aux = forward_backward(net, real_input(size))
    assert logits.shape == (1, 2)
    assert isinstance(aux, CMGAux) and aux.primary_logits.shape == (1, 2)
    assert not torch.equal(logits, aux.primary_logits)


def test_primary_logits_equal_the_training_aux_without_running_the_secondary_streams():
    torch.manual_seed(0)
    net = networks.build("cmg", **COMPACT, dropout=0.0).train()
    x = real_input((32, 64, 64), batch=2)
    with torch.no_grad():
        _, aux = net(x)
        calls = []
        handles = [net.streams[i].register_forward_pre_hook(lambda *_: calls.append(1)) for i in net.secondaries]
        try:
            primary = net.primary_logits(x)
        finally:
            for handle in handles:
                handle.remove()
    assert calls == []
    assert primary.shape == (2, 2)
    assert torch.equal(primary, aux.primary_logits)


def test_primary_parameters_are_exactly_the_primary_stream_attention_and_head():
    net = compact()
    prefixes = (f"streams.{T1CE}.", f"attention.{T1CE}.", "primary_head.")
    expected = {name for name, _ in net.named_parameters() if name.startswith(prefixes)}
    names = {id(p): name for name, p in net.named_parameters()}
    got = [names[id(p)] for p in net.primary_parameters()]
    assert len(got) == len(set(got)) and set(got) == expected
    assert any(n.startswith("streams.") for n in got) and any(n.startswith("attention.") for n in got)
    assert any(n.startswith("primary_head.") for n in got)
    # Nothing of the secondary streams, their guidance or the fused head.
    assert len(expected) < len(names)


def test_eval_at_the_larger_size_and_batch():
    net = compact().eval()
    with torch.no_grad():
        out = net(real_input((48, 96, 96), batch=2))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_eval_is_deterministic_and_returns_logits():
    out = eval_deterministic(compact(), real_input((32, 64, 64)))
    assert out.shape == (1, 2)


def attention_inputs(net, x):
    """The last-stage features entering each stream's dual attention, in eval mode."""
    seen = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].clone()))
        for i, module in enumerate(net.attention)
    ]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_t1ce_guides_the_secondary_streams_and_not_the_reverse():
    net = compact()
    x = real_input((32, 64, 64))
    base = attention_inputs(net, x)
    t1ce_changed = x.clone()
    t1ce_changed[:, T1CE] = torch.flip(t1ce_changed[:, T1CE], dims=(-1,))
    after = attention_inputs(net, t1ce_changed)
    # The FLAIR stream's input is unchanged, yet its features change: the T1ce guidance reached it.
    assert not torch.allclose(after[FLAIR], base[FLAIR])
    flair_changed = x.clone()
    flair_changed[:, FLAIR] = torch.flip(flair_changed[:, FLAIR], dims=(-1,))
    after = attention_inputs(net, flair_changed)
    assert torch.equal(after[T1CE], base[T1CE])
    assert not torch.allclose(after[FLAIR], base[FLAIR])


def test_absent_secondary_modality_is_ignored():
    net = compact().eval()
    x = real_input((32, 64, 64))
    present = torch.tensor([[True, True, True, False]])  # FLAIR absent
    scrambled = x.clone()
    scrambled[:, FLAIR] = torch.randn_like(scrambled[:, FLAIR])
    with torch.no_grad():
        torch.testing.assert_close(net(scrambled, present), net(x, present))
        assert not torch.allclose(net(scrambled), net(x))


def test_dual_attention_mixes_positions_within_slices_and_slices_with_each_other():
    torch.manual_seed(0)
    block = DualAttention(16, reduction=4)
    x = torch.randn(1, 16, 5, 4, 6)
    other = x.clone()
    other[:, :, 0] = torch.randn_like(other[:, :, 0])  # change slice 0 only
    with torch.no_grad():
        assert torch.equal(block(x), x)  # both scales start at 0: identity
        block.position_scale.fill_(1.0)
        within = block(x), block(other)
        # Position attention stays inside each slice: slices 1-4 are unaffected by slice 0.
        torch.testing.assert_close(within[0][:, :, 1:], within[1][:, :, 1:])
        assert not torch.allclose(within[0][:, :, 0], within[1][:, :, 0])
        block.slice_scale.fill_(1.0)
        across = block(x), block(other)
        assert not torch.allclose(across[0][:, :, 1:], across[1][:, :, 1:])
        assert across[0].shape == x.shape


def test_inference_path_exports():
    x = real_input((33, 37, 41))
    program = exports(compact(), x)
    assert program.module()(x).shape == (1, 2)


def test_build_without_arguments_is_the_paper_variant():
    net = networks.build("cmg")
    assert [stage[0].conv1.conv.out_channels for stage in net.streams[0].stages] == [64, 128, 256, 512]
    assert net.streams[0].stem.conv.kernel_size == (3, 7, 7)
    assert net.streams[0].stages[1][0].conv1.conv.kernel_size == (1, 3, 3)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"cmg paper variant: {n_params / 1e6:.2f} M parameters")
    # Documented in cmg.py: about 48 M (four mc3-18-shaped streams of ~11.5 M).
    assert 44e6 < n_params < 52e6
