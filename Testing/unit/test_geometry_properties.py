"""Property-based geometry tests (Hypothesis; synthetic volumes): for any spacing, rotation (right- or
left-handed) and origin, the label map lies on exactly the input grid and labels keep their physical place."""

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from BrainTumorFusionLib.case import Case
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.engine.postprocessing import regions_to_labels, uncrop
from BrainTumorFusionLib.engine.preprocessing import prepare
from BrainTumorFusionLib.files.file_io import case_files_in, read_case, write_labels
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.geometry import (
    GRID_TOLERANCE,
    ijk_to_ras_of,
    image_from_array,
    same_grid,
    spacing_of,
)
from Testing.plumbing import intensity_model

# Few small examples: the whole file runs in seconds on one thread.
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
spacings = st.tuples(*[st.floats(1.0, 2.0)] * 3)


@st.composite
def grids(draw):
    """A random IJK-to-RAS matrix: spacing, a rotation from a random quaternion, maybe left-handed, origin."""
    # Integer components: tiny floats would give subnormal direction cosines, which ITK's SVD cannot invert.
    quaternion = np.array(draw(st.tuples(*[st.integers(-100, 100)] * 4)), dtype=float)
    assume(np.linalg.norm(quaternion) > 10)
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    if draw(st.booleans()):
        rotation[:, 2] *= -1  # left-handed
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(draw(spacings))
    matrix[:3, 3] = draw(st.tuples(*[st.floats(-200.0, 200.0)] * 3))
    return matrix


def block_centre(mask, ijk_to_ras):
    """Physical (RAS) centre of the voxels of a (K, J, I) mask."""
    k, j, i = np.nonzero(mask)
    return (ijk_to_ras @ [i.mean(), j.mean(), k.mean(), 1.0])[:3]


def in_voxels(offset, ijk_to_ras):
    """A physical offset in voxels of a grid, per axis."""
    return np.abs(np.linalg.solve(ijk_to_ras[:3, :3], offset))


def brain_with_tumour(shape, tumour):
    """(Four channels, tumour mask): a brain off-centre (so the brain crop starts differently along each axis)
    with its own noise per channel (the roles must not look identical), +4 in the 6-voxel tumour block."""
    truth = np.zeros(shape, np.uint8)
    truth[tumour[0]:tumour[0] + 6, tumour[1]:tumour[1] + 6, tumour[2]:tumour[2] + 6] = 1
    image = np.zeros((len(MODALITIES),) + shape, np.float32)
    for channel in range(len(MODALITIES)):
        noise = np.random.default_rng(channel).uniform(0.0, 2.0, shape)
        image[channel, 2:-3, 3:-3, 5:-3] = 1.0 + noise[2:-3, 3:-3, 5:-3]
    image += 4.0 * truth
    return image, truth


@FAST
@given(matrix=grids(), model_spacing=spacings, extension=st.sampled_from([".nii.gz", ".nrrd"]))
def test_label_file_lies_on_exactly_the_input_grid(tmp_path_factory, matrix, model_spacing, extension):
    """Files on a random grid -> read, segment at a random model spacing, write: the label file's grid is the input's,
    and the tumour block is labelled where it is in the input."""
    folder = tmp_path_factory.mktemp("case")
    shape, tumour = (18, 19, 20), (6, 7, 8)
    image, _ = brain_with_tumour(shape, tumour)
    for channel, role in enumerate(MODALITIES):
        sitk.WriteImage(image_from_array(image[channel], matrix), str(folder / f"case_{role}{extension}"))
    case, reference = read_case(case_files_in(folder))
    assert same_grid(case.image.shape[1:], case.ijk_to_ras, shape, matrix)

    result = Pipeline(device="cpu", segmenter=intensity_model(spacing_mm=model_spacing)).run(case)
    write_labels(result.labels, reference, folder / f"labels{extension}")
    written = sitk.ReadImage(str(folder / f"labels{extension}"))
    np.testing.assert_allclose(ijk_to_ras_of(written), matrix, atol=GRID_TOLERANCE)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), result.labels)
    assert result.labels[tuple(t + 3 for t in tumour)] != 0  # the block's centre voxel is tumour


@FAST
@given(matrix=grids(), scale=st.tuples(*[st.one_of(st.floats(0.6, 0.85), st.floats(1.2, 2.0))] * 3),
       tumour=st.tuples(*[st.integers(5, 8)] * 3))
def test_labels_keep_their_physical_place_through_the_model_grid(matrix, scale, tumour):
    """A labelled block goes to the model grid (nearest neighbour) and its region probability comes back
    (linear, threshold, un-crop): its physical centre moves by at most one model voxel along each axis, there
    and back (a flipped or shifted axis would move it by many)."""
    shape = (18, 19, 20)
    image, truth = brain_with_tumour(shape, tumour)
    prepared = prepare(Case("c", image, matrix, (True,) * 4), spacing_of(matrix) * scale)
    assert prepared.resampled

    on_model = prepared.labels_on_model_grid(truth)
    centre = block_centre(truth, matrix)
    # Nearest neighbour: half a voxel off, a little more where model voxel centres tie on the block's faces
    # (1 mm -> 2 mm) and rounding splits a face.
    assert np.all(in_voxels(block_centre(on_model, prepared.model_ijk_to_ras) - centre,
                            prepared.model_ijk_to_ras) <= 1.0)

    regions = np.repeat(on_model[None].astype(np.float32), 3, axis=0)  # WT = TC = ET = the block
    back = uncrop(regions_to_labels(prepared.to_crop_grid(regions)), prepared.crop, shape)
    assert back.shape == shape and back[tuple(t + 3 for t in tumour)] != 0
    assert np.all(in_voxels(block_centre(back, matrix) - centre, prepared.model_ijk_to_ras) <= 1.0)
