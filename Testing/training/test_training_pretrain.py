"""SwinFUSE self-supervised pretraining: the losses, the single-modality views, resume, and fine-tuning from it."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.losses import ContrastiveLoss

from BrainTumorFusionLib.engine.catalogue import file_sha256
from Testing.training.training_support import CASES, one_thread, workspace  # noqa: F401
from Training.checkpoint import load_matching_weights
from Training.data import cache_path, load_cached
from Training.export import initialisation
from Training.network_recipes import build_network
from Training.pretraining import PretrainConfig, modality_pair, pretrain, pretraining_batch, pretraining_loss
from Training.ssl_losses import kde_jsd, voxel_features

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_SWINFUSE = {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3], "window_size": 4}


def nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent written out: mean cross-entropy over the 2B anchors, every other embedding a candidate."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    similarity = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    return torch.nn.functional.cross_entropy(similarity, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def test_monais_contrastive_loss_is_nt_xent():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    for other, temperature in ((z + 0.01 * torch.randn(8, 16), 0.1), (z[torch.randperm(8)], 0.1),
                               (torch.randn(8, 16), 0.5)):
        assert ContrastiveLoss(temperature)(z, other).item() == pytest.approx(nt_xent(z, other, temperature).item(),
                                                                             rel=1e-5)
    assert ContrastiveLoss(0.1)(z, z + 0.01 * torch.randn(8, 16)) < 0.05
    assert ContrastiveLoss(0.1)(z, z[torch.randperm(8)]) > 1.0
    # By hand for two pairs: anchor 0's candidates are 1, 2 (positive), 3.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([0.0, 1.0, 0.0]) / 0.5  # cosine of anchor 0 with 1, 2, 3
    assert ContrastiveLoss(0.5)(a, a.clone()).item() == pytest.approx(-torch.log_softmax(logits, 0)[1].item(),
                                                                       rel=1e-5)


def test_kde_jsd_is_zero_for_one_density_and_near_log2_for_separate_ones():
    torch.manual_seed(0)
    a = torch.randn(64, 8)
    assert abs(kde_jsd(a, a).item()) < 1e-6
    apart = kde_jsd(torch.randn(64, 8) * 0.05 + torch.eye(8)[0], torch.randn(64, 8) * 0.05 - torch.eye(8)[0])
    assert apart.item() == pytest.approx(math.log(2), abs=0.02)
    features = torch.randn(32, 8, requires_grad=True)
    kde_jsd(features, torch.randn(32, 8)).backward()
    assert features.grad.abs().sum() > 0


def test_voxel_features_makes_every_voxel_a_sample():
    deepest = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 2, 2, 2)
    samples = voxel_features(deepest)
    assert samples.shape == (16, 3)
    torch.testing.assert_close(samples[9], deepest[1, :, 0, 0, 1])


def test_modality_pair_is_seeded_and_uses_present_modalities_only():
    present = np.array([True, False, True, True])
    pairs = {modality_pair(0, step, present) for step in range(40)}
    assert all(a != b and present[a] and present[b] for a, b in pairs) and len(pairs) > 3
    assert modality_pair(0, 7, present) == modality_pair(0, 7, present)
    with pytest.raises(ValueError, match="two modalities"):
        modality_pair(0, 0, np.array([True, False, False, False]))


def cached_cases():
    _, cache = workspace()
    return {c: load_cached(cache_path(cache, (2.0, 2.0, 2.0), c)) for c in CASES}


def test_views_are_single_modalities_of_the_same_crop_rotated_and_masked():
    config = PretrainConfig(patch_size=[32, 32, 32], batch_size=2, mask_cubes=2, seed=3)
    cases = cached_cases()
    batch = pretraining_batch(config, cases, step=5, cube=(6, 6, 6))
    assert batch["views"].shape == batch["targets"].shape == (4, 1, 32, 32, 32)
    m1, m2 = batch["pair"]
    assert m1 != m2
    # Masked views equal their clean targets outside the zeroed cubes, and some voxels were zeroed.
    changed = batch["views"] != batch["targets"]
    assert changed.any() and (batch["views"][changed] == 0).all()
    # Un-rotating a view's clean target gives the same crop position for its m1 and m2 views: their brain
    # masks (non-zero voxels) agree, since the preprocessing zeroes the same background in every modality.
    for i in range(2):
        first = np.rot90(batch["targets"][i, 0].numpy(), -int(batch["rotations"][i]), axes=(1, 2))
        second = np.rot90(batch["targets"][i + 2, 0].numpy(), -int(batch["rotations"][i + 2]), axes=(1, 2))
        assert np.array_equal(first != 0, second != 0)
    again = pretraining_batch(config, cases, step=5, cube=(6, 6, 6))
    assert torch.equal(again["views"], batch["views"]) and torch.equal(again["rotations"], batch["rotations"])


def test_loss_parts_combine_with_the_papers_sign_and_reach_the_encoder():
    torch.manual_seed(0)
    network = build_network("swinfuse", TINY_SWINFUSE).train()
    config = PretrainConfig(patch_size=[64, 64, 64], batch_size=2)
    batch = pretraining_batch(config, cached_cases(), step=0, cube=(12, 12, 12))
    total, parts = pretraining_loss(network.pretrain_forward(batch["views"]), batch, config)
    expected = parts["inpaint"] + parts["rotation"] + parts["contrast"] - parts["jsd"]
    assert parts["total"] == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert network.dim.parameters().__next__().grad is not None
    assert network.modality_embed.proj.weight.grad.abs().sum() > 0


def run_config(tmp_path, steps, **extra):
    input_dir, cache = workspace()
    split = tmp_path / "split.json"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps({"train": list(CASES[:2]), "validation": [CASES[2]]}))
    return PretrainConfig(network_config=TINY_SWINFUSE, data_dir=str(input_dir), cache_dir=str(cache),
                          run_dir=str(tmp_path / "run"), split_file=str(split), steps=steps, batch_size=1,
                          checkpoint_every=1, amp="none", **extra)


def test_resumed_pretraining_equals_the_uninterrupted_run_and_fine_tuning_starts_from_it(tmp_path):
    straight = pretrain(run_config(tmp_path / "a", 3), progress=False)

    def kill_after_two(step, network, parts):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(run_config(tmp_path / "b", 3), progress=False, callback=kill_after_two)
    resumed = pretrain(run_config(tmp_path / "b", 3), resume=True, progress=False)
    assert resumed["losses"] == pytest.approx(straight["losses"][2:], rel=1e-6)
    a = torch.load(straight["last"], weights_only=True)["model"]
    b = torch.load(resumed["last"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = torch.load(resumed["last"], weights_only=True)
    assert record["kind"] == "pretraining" and record["step"] == 3 and record["hardware"].startswith("CPU")

    fresh = build_network("swinfuse", TINY_SWINFUSE)
    assert load_matching_weights(fresh, straight["last"]) == len(fresh.state_dict())
    assert all(torch.equal(v, a[k]) for k, v in fresh.state_dict().items())


def test_load_matching_weights_rejects_other_files_with_what_to_do(tmp_path):
    network = build_network("swinfuse", TINY_SWINFUSE)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read .*pretraining run"):
        load_matching_weights(network, garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": build_network("swinfuse", {**TINY_SWINFUSE, "feature_size": 24}).state_dict()}, other)
    with pytest.raises(ValueError, match="another network configuration"):
        load_matching_weights(network, other)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"model": {"something.weight": torch.zeros(2)}}, unrelated)
    with pytest.raises(ValueError, match="No weight"):
        load_matching_weights(network, unrelated)
    with pytest.raises(ValueError, match="no self-supervised pretraining"):
        pretrain(PretrainConfig(network="hafb", split_file="x"), progress=False)


def test_fine_tuning_starts_from_shipped_weights_and_the_export_keeps_their_training_record(tmp_path):
    # Shipped weights are a plain float16 state_dict; a run started from them loads every tensor as float32, and
    # its export records which shipped model (and that model's training budget) it continued.
    shipped = build_network("swinfuse", TINY_SWINFUSE)
    weights = tmp_path / "swinfuse.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in shipped.state_dict().items()}, weights)
    fresh = build_network("swinfuse", TINY_SWINFUSE)
    assert load_matching_weights(fresh, weights) == len(fresh.state_dict())
    assert all(v.dtype == shipped.state_dict()[k].dtype for k, v in fresh.state_dict().items())
    assert all(torch.equal(v, shipped.state_dict()[k].half().to(v.dtype)) for k, v in fresh.state_dict().items())

    catalogue = tmp_path / "models.json"
    catalogue.write_text(json.dumps({"models": [{"name": "swinfuse", "weights": {"file": "swinfuse.pt",
                                     "sha256": file_sha256(weights)}, "training": {"steps": 7, "hours": 0.5}}]}))
    record = initialisation(SimpleNamespace(init_from=str(weights)), catalogue)["initialised_from"]
    assert record["kind"] == "weights" and record["model"] == "swinfuse"
    assert record["training"] == {"steps": 7, "hours": 0.5}
