"""MISSU (networks/missu.py): shapes, gradients, MSF only in training, determinism, export, paper size."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.networks.missu import MultiScaleFusion
from BrainTumorFusionLib.networks.outputs import MISSUAux
from Testing.unit.network_checks import (  # noqa: F401 (one_thread: autouse fixture)
    eval_deterministic,
    exports,
    forward_backward,
    one_thread,
    real_input,
)

COMPACT = dict(widths=(4, 8, 8, 16), hidden_size=32, num_heads=4, mlp_dim=32, num_layers=1, img_size=32)
ODD = (33, 37, 41)  # padded to (40, 40, 48) inside the network: token grid (5, 5, 6) != built (4, 4, 4)


def compact():
    torch.manual_seed(0)
    return networks.build("missu", **COMPACT)


def test_forward_backward_on_a_real_crop():
    net = compact()
    logits, aux = forward_backward(net, real_input((32, 32, 32)))
    assert logits.shape == (1, 3, 32, 32, 32)
    assert isinstance(aux, MISSUAux)
    shapes = [(tuple(skip.shape), tuple(fused.shape)) for skip, fused in aux.distillation_pairs]
    expected = [(1, 4, 32, 32, 32), (1, 8, 16, 16, 16), (1, 8, 8, 8, 8)]
    assert shapes == [(s, s) for s in expected]
    for skip, fused in aux.distillation_pairs:
        assert not torch.equal(skip, fused)


def test_forward_backward_on_an_odd_size_interpolates_the_position_embedding():
    net = compact()
    logits, aux = forward_backward(net, real_input(ODD))
    assert logits.shape == (1, 3) + ODD
    assert aux.distillation_pairs[0][0].shape[2:] == (40, 40, 48)


def test_position_embedding_is_interpolated_only_for_other_grids():
    net = compact()
    built = net.position_embedding((4, 4, 4))
    assert torch.equal(built, net.position.flatten(2).transpose(1, 2))
    other = net.position_embedding((5, 5, 6))
    assert other.shape == (1, 5 * 5 * 6, 32)
    # Trilinear interpolation of a constant embedding stays constant.
    with torch.no_grad():
        net.position.fill_(0.25)
    torch.testing.assert_close(net.position_embedding((5, 5, 6)), torch.full((1, 150, 32), 0.25))


def test_msf_runs_in_training_only():
    net = compact()
    calls = []
    msf_modules = [m for block in net.msf for m in block.modules()]
    assert len(net.msf) == 3 and all(isinstance(block, MultiScaleFusion) for block in net.msf)
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in msf_modules]
    x = real_input((32, 32, 32))
    try:
        net.eval()
        with torch.no_grad():
            net(x)
        assert calls == []
        net.train()
        net(x)
        assert len(calls) > 0  # the hooks do fire when MSF runs
    finally:
        for handle in handles:
            handle.remove()


def test_msf_receptive_fields_are_3_7_9_19():
    # A single impulse: the extent of each branch's response is its receptive field.
    block = MultiScaleFusion(1).eval()
    with torch.no_grad():
        for conv in (block.dilated1, block.dilated3, block.dilated5, block.shared):
            conv.conv.weight.fill_(1.0)
            conv.conv.bias.zero_()
        x = torch.zeros(1, 1, 41, 41, 41)
        x[0, 0, 20, 20, 20] = 1.0
        a1 = block.dilated1(x)
        a13 = block.dilated3(a1)
        branches = [a1, block.shared(block.dilated3(x)), block.shared(a13), block.shared(block.dilated5(a13))]
    extents = []
    for b in branches:
        nonzero = b[0, 0, 20, 20].nonzero()
        extents.append(int(nonzero.max() - nonzero.min() + 1))
    assert extents == [3, 7, 9, 19]


def test_eval_is_deterministic_and_returns_logits():
    out = eval_deterministic(compact(), real_input((32, 32, 32)))
    assert out.shape == (1, 3, 32, 32, 32)


def test_inference_path_exports_without_msf():
    x = real_input(ODD)
    program = exports(compact(), x)
    assert program.module()(x).shape == (1, 3) + ODD
    # The MSF parameters may be lifted as graph inputs, but no node uses them or comes from an MSF module.
    inputs = program.graph_signature.inputs_to_parameters  # placeholder name -> parameter name
    nodes = {node.name: node for node in program.graph.nodes}
    msf_inputs = [nodes[p] for p, name in inputs.items() if name.startswith("msf.")]
    assert all(len(node.users) == 0 for node in msf_inputs)
    stacks = [str(node.meta.get("nn_module_stack", {})) for node in program.graph.nodes]
    assert any("transformer" in s for s in stacks)
    assert not any("msf" in s for s in stacks)


def test_build_without_arguments_is_the_paper_variant():
    net = networks.build("missu")
    assert net.position.shape == (1, 512, 16, 16, 16)
    assert len(net.transformer) == 4
    assert net.transformer[0].attn.num_heads == 8
    n_params = sum(p.numel() for p in net.parameters())
    print(f"missu paper variant: {n_params / 1e6:.2f} M parameters (paper: 10.5 M)")
    # Documented in missu.py: 12.5 M, +19 % over the paper's 10.5 M; allow +-30 %.
    assert abs(n_params - 10.5e6) / 10.5e6 < 0.30


def test_paper_variant_flops_match_the_docstring():
    # Counted on the meta device: no memory, no compute.
    net = networks.build("missu").to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.empty(1, 4, 128, 128, 128, device="meta"))
    gmacs = counter.get_total_flops() / 2e9
    print(f"missu paper variant: {gmacs:.0f} GMACs at 1x4x128^3 (paper: 132 G)")
    assert 200 < gmacs < 240
