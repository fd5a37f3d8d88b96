from BrainTumorFusionLib.modalities import assign_roles, case_name_of, role_of, role_of_token


def test_brats_2018_names():
    names = ["Brats18_X_flair", "Brats18_X_t1", "Brats18_X_t1ce", "Brats18_X_t2"]
    assert assign_roles(names) == {"t1": "Brats18_X_t1", "t1ce": "Brats18_X_t1ce", "t2": "Brats18_X_t2",
                                   "flair": "Brats18_X_flair"}


def test_brats_2023_names():
    names = ["BraTS-GLI-0001-t2w", "BraTS-GLI-0001-t1c", "BraTS-GLI-0001-t2f", "BraTS-GLI-0001-t1n"]
    assert assign_roles(names) == {"t1": "BraTS-GLI-0001-t1n", "t1ce": "BraTS-GLI-0001-t1c",
                                   "t2": "BraTS-GLI-0001-t2w", "flair": "BraTS-GLI-0001-t2f"}


def test_most_specific_pattern_wins_and_no_node_in_two_roles():
    assert role_of("T1GD_post") == "t1ce"
    assert role_of("t2f") == "flair"
    roles = assign_roles(["t1", "t1ce"])
    assert roles["t1"] == "t1" and roles["t1ce"] == "t1ce"
    # A name that fits two roles' patterns takes only the most specific one.
    roles = assign_roles(["case_t1ce"])
    assert roles == {"t1": None, "t1ce": "case_t1ce", "t2": None, "flair": None}


def test_unmatched_names_and_ties():
    assert assign_roles(["Segmentation", "labels"]) == {"t1": None, "t1ce": None, "t2": None, "flair": None}
    # Two names of equal specificity: the first wins, the other stays unassigned.
    assert assign_roles(["a_FLAIR", "b_flair"])["flair"] == "a_FLAIR"


def test_file_tokens_and_case_names_come_from_the_same_tokens():
    assert [role_of_token(t) for t in ("T1C", "t2f", "t1n", "t2w", "seg")] == ["t1ce", "flair", "t1", "t2", None]
    assert case_name_of("BraTS-GLI-0001-t1c") == "BraTS-GLI-0001" and case_name_of("P1 FLAIR") == "P1"
    assert case_name_of("t1ce") == "t1ce"  # nothing would be left: keep the name
