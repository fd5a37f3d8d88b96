"""Training.transforms: modality dropout, tumor-biased patches, the self-supervision cube, step-indexed sampling."""

from collections import Counter

import numpy as np
import pytest
import torch

from Testing.training.training_support import CASES, one_thread, workspace  # noqa: F401
from Training.data import cache_path
from Training.transforms import PatchDataset, StepSampler, cube_box, cube_voxels, drop_modalities, mask_cubes

pytestmark = pytest.mark.usefixtures("one_thread")
PATCH = (32, 32, 32)


def paths():
    _, cache_dir = workspace()
    return {c: cache_path(cache_dir, (2.0, 2.0, 2.0), c) for c in CASES}


def test_modality_dropout_never_drops_everything_and_mask_matches_channels():
    counts = Counter()
    for seed in range(600):
        rng = np.random.default_rng(seed)
        image = torch.randn(4, 6, 6, 6) + 10.0  # no channel is zero before dropout
        present = drop_modalities(image, np.ones(4, bool), rng, max_dropped=2, rate=2 / 3)
        assert present.any()
        zeroed = (image == 0).flatten(1).all(1).numpy()
        np.testing.assert_array_equal(zeroed, ~present)
        counts[int((~present).sum())] += 1
    assert set(counts) == {0, 1, 2}
    assert all(n > 150 for n in counts.values())  # rate 2/3: roughly uniform over 0, 1, 2 dropped

    # The default keeps all four in half of the samples, and T1ce (weight 0.5) is dropped less than the others.
    dropped = np.zeros(4)
    kept_all = 0
    for seed in range(2000):
        present = drop_modalities(torch.ones(4, 2, 2, 2), np.ones(4, bool), np.random.default_rng(seed),
                                  weights=[1.0, 0.5, 1.0, 1.0])
        dropped += ~present
        kept_all += present.all()
    assert 900 < kept_all < 1100
    assert dropped[1] < 0.7 * dropped[[0, 2, 3]].min()

    # A case that already lacks two modalities: at most one more goes, the absent ones stay absent.
    for seed in range(100):
        rng = np.random.default_rng(seed)
        image = torch.randn(4, 3, 3, 3) + 10.0
        image[[0, 2]] = 0
        present = drop_modalities(image, np.array([False, True, False, True]), rng, max_dropped=3)
        assert present.sum() >= 1 and not present[0] and not present[2]
        np.testing.assert_array_equal((image == 0).flatten(1).all(1).numpy(), ~present)


def test_patches_are_augmented_deterministically_per_index():
    dataset = PatchDataset(CASES, paths(), PATCH, seed=0, modality_dropout=True, cube=cube_voxels(20, (2, 2, 2)))
    first = dataset[5]
    assert first["image"].shape == (4,) + PATCH and first["regions"].shape == (3,) + PATCH
    assert first["image"].dtype == torch.float32 and first["present"].dtype == torch.bool
    # The mask matches the zeroed channels.
    zeroed = (first["image"] == 0).flatten(1).all(1)
    assert torch.equal(zeroed, ~first["present"])
    again = PatchDataset(CASES, paths(), PATCH, seed=0, modality_dropout=True, cube=cube_voxels(20, (2, 2, 2)))[5]
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(dataset[6]["image"], first["image"])
    # Regions stay nested after flips and crops: ET inside TC inside WT.
    wt, tc, et = first["regions"].bool()
    assert not (tc & ~wt).any() and not (et & ~tc).any()


def test_crops_are_biased_towards_tumor():
    tumor_only = PatchDataset(CASES, paths(), PATCH, seed=1, pos=1.0, neg=0.0)
    assert all(tumor_only[i]["regions"][0].any() for i in range(12))
    # Every pass over the data visits every case once, in a seeded order.
    passes = [[tumor_only.case_of(e * 3 + k) for k in range(3)] for e in range(4)]
    assert all(sorted(p) == sorted(CASES) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_scanner_augmentation_changes_brain_voxels_only():
    from Training.transforms import KeepBackground, intensity_transforms
    image = torch.zeros(4, 16, 16, 16)
    image[:, 4:12, 4:12, 4:12] = torch.randn(4, 8, 8, 8)
    changed = 0
    for seed in range(20):
        transform = KeepBackground(intensity_transforms("basic"))
        transform.set_random_state(seed=seed)
        out = transform({"image": image.clone()})["image"]
        assert (out[:, :4] == 0).all() and (out[:, 12:] == 0).all()
        changed += not torch.equal(out, image)
    assert changed == 20
    with pytest.raises(ValueError, match="basic"):
        intensity_transforms("fancy")


def test_cases_with_a_large_core_are_shown_more_often_and_core_crops_hold_core():
    from Training.data import load_cached
    from Training.transforms import CORE_CASE_FRACTION, repeated_core_cases
    listed = repeated_core_cases(CASES, paths(), 3)
    for case in CASES:
        wt, tc, et = (int(r.sum()) for r in load_cached(paths()[case])["regions"])
        assert listed.count(case) == (3 if tc - et > CORE_CASE_FRACTION * wt else 1)
    core_only = PatchDataset(CASES, paths(), PATCH, seed=2, core_crops=1.0)
    assert sum(bool(core_only[i]["regions"][1].any()) for i in range(12)) >= 6


def test_cube_is_20mm_and_masks_every_modality():
    assert cube_voxels(20, (2.0, 2.0, 2.0)) == (10, 10, 10)
    assert cube_voxels(20, (1.0, 1.0, 2.5)) == (8, 20, 20)  # spacing I, J, K -> sizes D, H, W
    rng = np.random.default_rng(0)
    boxes = torch.from_numpy(np.stack([cube_box(PATCH, (10, 10, 10), rng) for _ in range(2)]))
    for d, h, w, sd, sh, sw in boxes.tolist():
        assert (sd, sh, sw) == (10, 10, 10) and max(d, h, w) <= 22 and min(d, h, w) >= 0
    image = torch.randn(2, 4, *PATCH) + 10.0
    masked = mask_cubes(image, boxes)
    for sample, (d, h, w, sd, sh, sw) in enumerate(boxes.tolist()):
        inside = torch.zeros(PATCH, dtype=torch.bool)
        inside[d:d + sd, h:h + sh, w:w + sw] = True
        assert (masked[sample][:, inside] == 0).all()
        assert torch.equal(masked[sample][:, ~inside], image[sample][:, ~inside])
    assert (image != 0).all()  # the clean batch is untouched


def test_ranks_draw_disjoint_samples_and_resume_continues_the_sequence():
    world, batch = 2, 3
    rank0 = list(StepSampler(0, 4, batch, 0, world))
    rank1 = list(StepSampler(0, 4, batch, 1, world))
    assert not set(rank0) & set(rank1) and sorted(rank0 + rank1) == list(range(4 * world * batch))
    assert list(StepSampler(0, 2, batch, 0, world)) + list(StepSampler(2, 4, batch, 0, world)) == rank0
