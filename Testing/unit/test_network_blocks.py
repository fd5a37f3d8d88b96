"""Shared network blocks (networks/blocks.py) and the one size attribute of every registry network."""

import pytest
import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.networks import registry
from BrainTumorFusionLib.networks.blocks import (
    crop_to,
    learned_position_grid,
    pad_to_multiple,
    position_grid_for,
    tuple3,
)
from Testing.unit.network_checks import one_thread  # noqa: F401 (one_thread: autouse fixture)

# A small configuration per registry network; a network added to the registry must be listed here.
SMALL = {
    "hafb": dict(widths=(4, 8, 8, 16, 16)),
    "missu": dict(widths=(4, 8, 8, 16), hidden_size=32, num_heads=4, mlp_dim=32, num_layers=1, img_size=32),
    "transfuse": dict(img_size=32, cnn_widths=(16, 32, 64), cnn_blocks=(1, 1, 1), vit_hidden_size=64,
                      vit_depth=2, vit_heads=4, vit_mlp_dim=128),
    "swinfuse": dict(feature_size=12, depths=(1, 1, 1, 1), window_size=4),
    "cmg": dict(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1)),
    "segresnet": dict(init_filters=8),
}
EXPECTED_MULTIPLE = {"hafb": 16, "missu": 8, "transfuse": 16, "swinfuse": 32, "cmg": 1, "segresnet": 8}


def test_pad_to_multiple_pads_zeros_at_the_end_and_crop_to_undoes_it():
    x = torch.randn(2, 3, 5, 8, 9) + 10  # no zeros of its own
    padded, size = pad_to_multiple(x, 4)
    assert size == (5, 8, 9) and padded.shape == (2, 3, 8, 8, 12)
    assert torch.equal(padded[:, :, :5, :8, :9], x)
    assert (padded == 0).sum() == padded.numel() - x.numel()  # only zeros were added
    assert torch.equal(crop_to(padded, size), x)


def test_pad_to_multiple_leaves_multiples_alone_and_honours_a_minimum():
    x = torch.randn(1, 1, 8, 16, 4)
    same, size = pad_to_multiple(x, 4)
    assert same is x and crop_to(same, size) is x
    padded, size = pad_to_multiple(torch.randn(1, 1, 40, 70, 10), 32, minimum=64)
    assert padded.shape[2:] == (64, 96, 64) and size == (40, 70, 10)


def test_learned_position_grid_is_used_as_built_and_interpolated_for_other_grids():
    torch.manual_seed(0)
    position = learned_position_grid(6, (2, 3, 4))
    assert isinstance(position, torch.nn.Parameter) and position.shape == (1, 6, 2, 3, 4)
    assert 0 < position.std() < 0.05  # ViT-style small initialisation, not zeros
    assert position_grid_for(position, (2, 3, 4)) is position
    assert position_grid_for(position, (4, 3, 5)).shape == (1, 6, 4, 3, 5)
    with torch.no_grad():
        position.fill_(0.25)  # trilinear interpolation of a constant stays constant
    torch.testing.assert_close(position_grid_for(position, (5, 5, 6)), torch.full((1, 6, 5, 5, 6), 0.25))


def test_tuple3_repeats_an_int_and_names_the_argument_on_a_wrong_length():
    assert tuple3(7, "img_size") == (7, 7, 7)
    assert tuple3([1, 2, 3], "stem_stride") == (1, 2, 3)
    with pytest.raises(ValueError, match=r"img_size needs 1 or 3 values \(D, H, W\), got \[64, 64\]"):
        tuple3([64, 64], "img_size")


def test_every_registry_network_has_an_int_size_multiple_and_no_stride():
    # The zoo's own networks (tests register stand-ins of their own, e.g. Testing/plumbing.py).
    assert sorted(SMALL) == sorted(set(networks.available()) - set(registry._EXTRA))
    for name, config in SMALL.items():
        net = networks.build(name, **config)
        assert type(net.size_multiple) is int and net.size_multiple == EXPECTED_MULTIPLE[name], name
        assert not hasattr(net, "stride"), name


def test_segresnet_size_multiple_is_the_divisor_it_really_needs():
    torch.manual_seed(0)
    net = networks.build("segresnet", init_filters=8, blocks_down=(1, 2, 2), blocks_up=(1, 1)).eval()
    assert net.size_multiple == 4
    with torch.no_grad():
        assert net(torch.randn(1, 4, 12, 16, 20)).shape == (1, 3, 12, 16, 20)
        with pytest.raises(RuntimeError):
            net(torch.randn(1, 4, 12, 16, 18))  # not a multiple of 4: the skips do not line up
