"""Skull stripping: BraTS-style detection on the 27 shared cases, deepbet's brain mask on a real head MRI with its
skull, the missing-package message, cancel and first-use installation.

The head: `mean_reg2mean.nii.gz` from the PyPI package pydeface 2.1.0 (MIT licence, Poldrack lab, Stanford;
https://github.com/poldracklab/pydeface), the mean of T1-weighted head MRIs co-registered to their mean, skull,
face and neck included, 176 x 256 x 256 voxels of 1 x 0.98 x 0.98 mm. pydeface is pinned in requirements-dev.txt
so CI has it without any other download; only its data file is read (pydeface's code and nipype never run)."""

import importlib.resources
import importlib.util
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.app import dependencies
from BrainTumorFusionLib.errors import Cancelled, InputError, ModelError
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.skull_stripping import (
    DEEPBET_REQUIREMENT,
    apply_brain_mask,
    brain_mask,
    is_skull_stripped,
)

BRAIN_ML = (1000.0, 1800.0)  # an adult brain; the plausibility range


def head_image() -> sitk.Image:
    path = importlib.resources.files("pydeface") / "data" / "mean_reg2mean.nii.gz"
    with importlib.resources.as_file(path) as file:
        return sitk.ReadImage(str(file))


def head_region(image: sitk.Image) -> np.ndarray:
    """The head (skin inwards): above a tenth of the bright end, holes filled (dark skull and CSF are inside)."""
    array = sitk.GetArrayViewFromImage(image)
    foreground = sitk.BinaryThreshold(image, 0.1 * float(np.percentile(array, 99)), float(array.max()), 1, 0)
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(foreground)).astype(bool)


def millilitres(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * float(np.prod(mask.GetSpacing())) / 1000


@pytest.fixture(scope="module")
def head():
    return head_image()


@pytest.fixture(scope="module")
def head_mask(head):
    return brain_mask(head, device="cpu")


@pytest.mark.slow
def test_every_shared_brats_volume_is_detected_as_skull_stripped(brats_dir):
    cases = sorted(path for path in brats_dir.iterdir() if path.is_dir())
    assert len(cases) == 27
    not_detected = [f"{case.name}_{m}" for case in cases for m in MODALITIES
                    if not is_skull_stripped(sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{case.name}_{m}.nii.gz"))))]
    assert not_detected == []


@pytest.mark.needs("pydeface")
def test_a_head_with_its_skull_is_not_skull_stripped(head):
    array = sitk.GetArrayFromImage(head)
    assert not is_skull_stripped(array)
    # The same head with its air set to exactly zero, as some exports do; then also inside a larger zero grid, so
    # that the neck no longer reaches the grid's faces: its volume (4 L) still tells it from a brain.
    zeroed = np.where(head_region(head), array, 0)
    assert not is_skull_stripped(zeroed, spacing=head.GetSpacing())
    padded = np.pad(zeroed, 16)
    assert not is_skull_stripped(padded, spacing=head.GetSpacing())
    assert not is_skull_stripped(padded)  # 1 mm voxels assumed: near enough to these 0.95 mm³ ones


@pytest.mark.needs("pydeface")
def test_detection_takes_stacks_and_refuses_other_shapes(head):
    array = sitk.GetArrayFromImage(head)
    assert not is_skull_stripped(np.stack([array, array]))
    assert not is_skull_stripped(np.zeros((8, 8, 8)))  # empty: nothing to call a brain
    with pytest.raises(InputError, match="3D"):
        is_skull_stripped(array[0])


@pytest.mark.slow
@pytest.mark.needs("pydeface", "deepbet")
def test_brain_mask_of_a_real_head_is_a_plausible_brain_inside_the_head(head, head_mask):
    assert head_mask.GetPixelID() == sitk.sitkUInt8
    assert head_mask.GetSize() == head.GetSize()
    for read in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert np.allclose(getattr(head_mask, read)(), getattr(head, read)())
    mask = sitk.GetArrayFromImage(head_mask)
    assert set(np.unique(mask)) == {0, 1}
    assert BRAIN_ML[0] <= millilitres(head_mask) <= BRAIN_ML[1]
    inside = head_region(head)
    assert mask[inside].sum() / mask.sum() > 0.999  # the brain lies within the head...
    assert mask.sum() / inside.sum() < 0.5  # ...and is far from all of it: scalp, skull, face and neck are out
    stripped = apply_brain_mask(head, head_mask)
    assert stripped.GetPixelID() == head.GetPixelID()
    assert is_skull_stripped(sitk.GetArrayFromImage(stripped))  # what the chain produces is detected as done


@pytest.mark.slow
@pytest.mark.needs("pydeface", "deepbet")
def test_brain_mask_follows_the_image_in_physical_space(head, head_mask):
    # The same head stored with its axes permuted and flipped (another direction matrix): the mask must cover the
    # same physical voxels, so compare on the original grid.
    moved = sitk.Flip(sitk.PermuteAxes(head, [2, 0, 1]), [True, False, True])
    moved_mask = brain_mask(moved, device="cpu")
    assert moved_mask.GetSize() == moved.GetSize()
    back = sitk.Resample(moved_mask, head, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a, b = sitk.GetArrayFromImage(head_mask).astype(bool), sitk.GetArrayFromImage(back).astype(bool)
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.999


@pytest.mark.needs("pydeface")
def test_missing_deepbet_says_how_to_install_it(head, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepbet", None)  # what `import deepbet` meets where it is not installed
    with pytest.raises(ModelError) as error:
        brain_mask(head)
    message = str(error.value)
    assert "deepbet" in message and f"pip install {DEEPBET_REQUIREMENT}" in message
    assert f"slicer.util.pip_install('{DEEPBET_REQUIREMENT}')" in message


@pytest.mark.needs("pydeface")
def test_cancel_before_any_work(head):
    messages = []
    with pytest.raises(Cancelled):
        brain_mask(head, progress=lambda fraction, message: messages.append(message), should_cancel=lambda: True)
    assert messages == []


@pytest.mark.needs("pydeface")
def test_cancel_between_stages(head):
    calls, messages = [], []

    def cancel_on_second_check():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(Cancelled, match="skull stripping"):
        brain_mask(head, progress=lambda fraction, message: messages.append(message),
                   should_cancel=cancel_on_second_check, device="cpu")
    assert messages == ["Skull stripping: loading the model"]  # stopped after the model load, before the networks


@pytest.mark.needs("pydeface")
def test_a_2d_image_is_refused(head):
    with pytest.raises(InputError, match="3D"):
        brain_mask(head[:, :, 100])


def test_first_use_installation_asks_only_when_deepbet_is_missing(monkeypatch):
    asked, installed = [], True
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: (
        (object() if installed else None) if name == "deepbet" else real_find_spec(name, *rest)))
    dependencies.ensure_skull_stripping_installed(confirm=lambda message: asked.append(message) or True)
    assert asked == []  # installed: nothing to ask
    installed = False
    with pytest.raises(Cancelled, match="declined"):
        dependencies.ensure_skull_stripping_installed(confirm=lambda message: asked.append(message) or False)
    assert len(asked) == 1 and "deepbet" in asked[0] and "skull" in asked[0]
