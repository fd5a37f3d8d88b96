"""Training.data: source groups and the recorded, deterministic, stratified train/validation split."""

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from BrainTumorFusionLib.errors import InputError
from Testing.training.training_support import BRATS_DIR
from Training.data import (
    group_from_id,
    load_or_make_split,
    make_fold_split,
    make_split,
    read_groups_table,
    source_groups,
)


@pytest.fixture(scope="module")
def real_groups():
    """{case id: source_group} of the 27 real cases, from their cases.csv."""
    with open(BRATS_DIR / "cases.csv", newline="") as stream:
        return {row["case_id"]: row["source_group"] for row in csv.DictReader(stream)}


def test_group_from_id_follows_brats_naming(real_groups):
    assert group_from_id("Brats18_CBICA_ABM_1") == "CBICA"
    assert group_from_id("Brats18_2013_11_1") == "2013"
    assert group_from_id("Brats18_TCIA01_378_1") == "TCIA01"
    assert group_from_id("BraTS2021_00006") == "BraTS2021"
    assert group_from_id("BraTS-GLI-00000-000") == "BraTS-GLI"
    assert group_from_id("BraTS20_Training_001") == "BraTS20"
    # Without a table, every real case gets the group its cases.csv records.
    assert {c: group_from_id(c) for c in real_groups} == real_groups


def test_groups_come_from_the_table_when_present(tmp_path, real_groups):
    ids = sorted(real_groups)
    assert source_groups(ids, BRATS_DIR) == real_groups
    table = tmp_path / "sites.csv"
    table.write_text("case_id,site\nBrats18_CBICA_ABM_1,hospital-a\n")
    assert read_groups_table(table) == {"Brats18_CBICA_ABM_1": "hospital-a"}
    groups = source_groups(ids, table=table)
    assert groups["Brats18_CBICA_ABM_1"] == "hospital-a"
    assert groups["Brats18_CBICA_AME_1"] == "CBICA"  # not in the table: from the id


def check_stratified(split, groups, fraction):
    train, validation = set(split["train"]), set(split["validation"])
    assert not train & validation
    assert train | validation == set(groups)
    assert abs(len(validation) - len(groups) * fraction) <= 1
    sizes = Counter(groups.values())
    held_out = Counter(groups[c] for c in validation)
    for group, size in sizes.items():
        assert abs(held_out[group] - size * fraction) <= 1, (group, held_out[group], size)


def test_split_is_deterministic_disjoint_and_stratified(real_groups):
    split = make_split(real_groups, 0.2, seed=7)
    check_stratified(split, real_groups, 0.2)
    assert len(split["validation"]) in (5, 6)
    # Same ids, groups and seed in another order: the same split. Another seed: another split.
    shuffled = list(real_groups.items())
    random.Random(1).shuffle(shuffled)
    assert make_split(dict(shuffled), 0.2, seed=7) == split
    assert make_split(real_groups, 0.2, seed=8)["validation"] != split["validation"]
    assert split["groups"] == dict(sorted(real_groups.items())) and split["seed"] == 7


def test_split_keeps_group_shares_on_a_large_set():
    groups = {f"case{i:03d}": g for i, g in enumerate(["A"] * 50 + ["B"] * 30 + ["C"] * 17 + ["D"] * 3)}
    for seed in range(5):
        split = make_split(groups, 0.2, seed)
        check_stratified(split, groups, 0.2)
        assert len(split["validation"]) == 20


def test_split_leaves_a_case_on_each_side():
    split = make_split({"a": "x", "b": "x"}, 0.1, 0)
    assert len(split["train"]) == 1 and len(split["validation"]) == 1


def test_folds_partition_the_cases_stratified_and_keep_make_splits_order(real_groups):
    splits = [make_fold_split(real_groups, 3, fold, seed=0) for fold in range(3)]
    held_out = [set(split["validation"]) for split in splits]
    assert set().union(*held_out) == set(real_groups) and sum(map(len, held_out)) == len(real_groups)
    for split in splits:
        check_stratified(split, real_groups, 1 / 3)
        assert split["folds"] == 3 and "val_fraction" not in split
    # Listing order does not matter; the fraction split of the same seed is unchanged by the shared ordering.
    assert make_fold_split(dict(reversed(list(real_groups.items()))), 3, 1, seed=0) == splits[1]
    assert make_split(real_groups, 0.2, seed=0)["validation"] == json.loads(
        (Path(__file__).parents[2] / "Training/splits/brats-shared-seed0.json").read_text())["validation"]


def test_folds_out_of_range_are_refused_with_the_valid_range(real_groups):
    with pytest.raises(InputError, match="0..2"):
        make_fold_split(real_groups, 3, 3)
    with pytest.raises(InputError, match="2 to"):
        make_fold_split(real_groups, 1, 0)
    with pytest.raises(InputError, match="needs --folds"):
        load_or_make_split("unused.json", real_groups, fold=1)


def test_a_fold_split_is_recorded_and_reused(tmp_path, real_groups):
    path = tmp_path / "split.json"
    split = load_or_make_split(path, real_groups, seed=0, folds=3, fold=2)
    assert split == make_fold_split(real_groups, 3, 2, seed=0) == json.loads(path.read_text())


def test_split_is_recorded_and_reused(tmp_path, real_groups):
    path = tmp_path / "run" / "split.json"
    split = load_or_make_split(path, real_groups, 0.2, seed=3)
    assert json.loads(path.read_text()) == split
    # A recorded split wins over new settings (resume, or a split chosen on purpose).
    assert load_or_make_split(path, real_groups, 0.5, seed=4) == split
    with pytest.raises(Exception, match="not in the data folder"):
        load_or_make_split(path, {c: g for c, g in real_groups.items() if c != split["validation"][0]})
