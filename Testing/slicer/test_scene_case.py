"""case_from_nodes: nodes in roles -> validated Case (preparation.assemble_case does the checks)."""

import numpy as np
import pytest

from BrainTumorFusionLib.app.scene import case_from_nodes
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.modalities import case_name_of

SHAPE = (4, 5, 6)
MATRIX = np.array([[0, 0, -1.5, 10.0], [1.0, 0, 0, -4.0], [0, 2.0, 0, 3.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("node_name, case_name", [
    ("Brats18_CBICA_ABM_1_t1ce", "Brats18_CBICA_ABM_1"),
    ("BraTS-GLI-00000-000-t1c", "BraTS-GLI-00000-000"),
    ("BraTS-GLI-00000-000-t2f", "BraTS-GLI-00000-000"),
    ("patient 3 FLAIR", "patient 3"),
    ("P1_T1", "P1"),
    ("t1ce", "t1ce"),  # nothing would be left: keep the name
    ("scan_b", "scan_b"),
])
def test_case_name_strips_modality_suffix(node_name, case_name):
    assert case_name_of(node_name) == case_name


def test_case_from_nodes_in_modality_order(kit, vtk_messages):
    rng = np.random.default_rng(5)
    arrays = {m: rng.uniform(1, 2, SHAPE).astype(np.float32) for m in ("t1ce", "t2", "flair")}
    nodes = {m: kit.add_volume(arrays[m], MATRIX, f"P9_{m}") for m in arrays}
    case = case_from_nodes(**nodes)  # no T1: the reference is T1ce
    assert case.name == "P9"
    assert case.present == (False, True, True, True)
    assert case.image.shape == (4,) + SHAPE and case.image.dtype == np.float32
    assert not case.image[0].any()
    for channel, role in enumerate(("t1", "t1ce", "t2", "flair")):
        if role in arrays:
            np.testing.assert_array_equal(case.image[channel], arrays[role])
    np.testing.assert_allclose(case.ijk_to_ras, MATRIX)
    assert case_from_nodes(**nodes, name="given").name == "given"
    vtk_messages()


def test_no_node_selected(kit):
    with pytest.raises(InputError, match="No input volume is given: .* or select them in the module"):
        case_from_nodes()
