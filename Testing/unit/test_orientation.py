"""Left-right mirrored inputs (issue 33, finding 1): refused naming the input, on real cases; never on the 27 shared
cases as they are, and every mirrored copy of each of their inputs caught."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of
from BrainTumorFusionLib.preparation.orientation import MIRROR_RATIO, check_orientation, mirror_ratios
from Testing.realdata import BRATS_DIR, brats_case_dir

CASE = "Brats18_CBICA_AQQ_1"  # the smallest margins of the shared cases (its T2 and FLAIR)


def write_case(folder, case_id, flipped=()):
    """The shared case as files in `folder`, the roles in `flipped` with their voxels flipped left-right and the
    header kept (a wrong DICOM-to-NIfTI conversion)."""
    folder.mkdir()
    for role in MODALITIES:
        image = sitk.ReadImage(str(brats_case_dir(case_id) / f"{case_id}_{role}.nii.gz"))
        if role in flipped:
            flipped_image = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
            flipped_image.CopyInformation(image)
            image = flipped_image
        sitk.WriteImage(image, str(folder / f"{case_id}_{role}.nii.gz"))
    return case_files_in(folder)


@pytest.mark.parametrize("role", ["flair", "t2"])
def test_a_flipped_input_is_refused_by_name(tmp_path, role):
    case_files = write_case(tmp_path / CASE, CASE, flipped=(role,))
    with pytest.raises(InputError, match=f"^{dict(t2='T2', flair='FLAIR')[role]} looks mirrored left-right"):
        read_case(case_files, register="off")


def test_two_inputs_that_mirror_each_other_are_both_named(tmp_path):
    case_files = write_case(tmp_path / CASE, CASE, flipped=("flair",))
    case_files.files = {role: path for role, path in case_files.files.items() if role in ("t1ce", "flair")}
    with pytest.raises(InputError, match="^T1ce and FLAIR are mirror images of each other left-right"):
        read_case(case_files, register="off")


def mirrored_about_the_brain(volume):
    """`volume` flipped left-right about its own brain's mid-plane: a flipped input once registration has moved it
    back over the head (registration is rigid: it cannot undo the flip)."""
    columns = np.flatnonzero((volume != 0).any(axis=(0, 1)))
    index = np.arange(volume.shape[2])
    source = columns[0] + columns[-1] - index
    inside = (source >= 0) & (source < volume.shape[2])
    out = np.zeros_like(volume)
    out[:, :, index[inside]] = volume[:, :, source[inside]]
    return out


@pytest.mark.slow
def test_no_false_alarm_on_the_shared_cases_and_every_mirrored_input_caught():
    present = (True,) * 4
    correct, mirrored = [], []
    for folder in sorted(path for path in BRATS_DIR.iterdir() if path.is_dir()):
        images = [sitk.ReadImage(str(folder / f"{folder.name}_{role}.nii.gz")) for role in MODALITIES]
        image = np.stack([sitk.GetArrayFromImage(each).astype(np.float32) for each in images])
        ijk_to_ras = ijk_to_ras_of(images[0])
        correct += mirror_ratios(image, present, ijk_to_ras).values()
        check_orientation(image, present, ijk_to_ras)
        for channel, role in enumerate(MODALITIES):
            copy = image.copy()
            copy[channel] = mirrored_about_the_brain(copy[channel])
            ratios = mirror_ratios(copy, present, ijk_to_ras)
            assert max(ratios, key=ratios.get) == role
            mirrored.append(ratios[role])
    print(f"27 cases: largest ratio as they are {max(correct):.3f}; smallest of a mirrored input {min(mirrored):.3f}")
    assert len(correct) == len(mirrored) == 108
    assert max(correct) < MIRROR_RATIO < min(mirrored)
