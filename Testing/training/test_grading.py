"""Training.grading (the cmg grading recipe), its evaluation and export, and grading a real case through the
library with the exported weights."""

import csv
import json
import logging

import numpy as np
import pytest
import torch

from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.modalities import MODALITIES
from Testing.training.training_support import BRATS_DIR, CASES, REPO, make_input, one_thread, workspace  # noqa: F401
from Training import checkpoint as ckpt
from Training.__main__ import main
from Training.data import cache_path, discover
from Training.grading import (
    GradingConfig,
    augment,
    class_weights,
    cumulative_alpha,
    lgg_auc,
    load_or_make_grading_split,
    make_grading_split,
    read_grades,
    train_grader,
)
from Training.network_recipes import build_network

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CMG = {"widths": [4, 4, 8, 8], "blocks": [1, 1, 1, 1]}
LGG_CASES = ("Brats18_TCIA10_628_1", "Brats18_TCIA10_639_1")
COMMITTED_SPLIT = REPO / "Training" / "splits" / "brats-shared-grading-seed0.json"


class Killed(Exception):
    pass


def tiny_grading_config(run_dir, **overrides):
    """The three workspace cases (2 HGG, 1 LGG; one HGG goes to validation), a tiny network at 32^3."""
    input_dir, cache_dir = workspace()
    values = dict(network_config=dict(TINY_CMG), data_dir=str(input_dir), cache_dir=str(cache_dir),
                  run_dir=str(run_dir), patch_size=[32, 32, 32], batch_size=2, stage1_steps=2, stage2_steps=2,
                  lr=3e-3, checkpoint_every=1, validate_every=0, log_every=1, val_fraction=0.34, device="cpu",
                  amp="none")
    values.update(overrides)
    return GradingConfig(**values)


def primary_key(key):
    """Whether a state_dict key belongs to the T1ce branch (stream, dual attention, primary head)."""
    p = MODALITIES.index("t1ce")
    return key.startswith((f"streams.{p}.", f"attention.{p}.", "primary_head."))


# ---------------------------------------------------------------------------------------------- recipe pieces


def test_cumulative_learning_moves_from_the_primary_to_the_fused_head():
    assert cumulative_alpha(0, 100) == 1.0
    assert cumulative_alpha(50, 100) == pytest.approx(0.75)
    assert cumulative_alpha(99, 100) == pytest.approx(1 - 0.99 ** 2)
    alphas = [cumulative_alpha(t, 10) for t in range(10)]
    assert all(a > b for a, b in zip(alphas, alphas[1:])) and alphas[-1] > 0


def test_class_weights_are_normalised_inverse_class_frequencies():
    weights = class_weights(["HGG", "HGG", "HGG", "LGG"])
    assert weights == pytest.approx([4 / 6, 2.0])  # N / (K n_c): HGG 4/(2*3), LGG 4/(2*1)
    assert 3 * weights[0] + 1 * weights[1] == pytest.approx(4)  # weighted count = N
    with pytest.raises(InputError, match="no LGG case"):
        class_weights(["HGG", "HGG"])


def test_grades_come_from_cases_csv_and_the_ungraded_case_is_left_out(caplog):
    with caplog.at_level(logging.INFO, logger="Training.grading"):
        grades = read_grades(BRATS_DIR / "cases.csv")
    assert "BraTS2021_00006" not in grades
    assert any("BraTS2021_00006" in r.getMessage() and "no grade" in r.getMessage() for r in caplog.records)
    assert sorted(c for c, g in grades.items() if g == "LGG") == list(LGG_CASES)
    assert set(grades.values()) == {"HGG", "LGG"} and len(grades) == 26


def test_grade_table_errors_say_what_to_do(tmp_path):
    table = tmp_path / "cases.csv"
    table.write_text("case_id,grade\na,HGG\nb,GBM\n")
    with pytest.raises(InputError, match="use one of HGG, LGG"):
        read_grades(table)
    table.write_text("case_id,source_group\na,x\n")
    with pytest.raises(InputError, match="`grade` column"):
        read_grades(table)


def test_the_split_keeps_one_lgg_in_each_part_and_the_committed_split_is_reproduced(tmp_path):
    grades = read_grades(BRATS_DIR / "cases.csv")
    grades = {c: grades[c] for c in discover(BRATS_DIR) if c in grades}
    split = make_grading_split(grades, 0.2, seed=0)
    for part in ("train", "validation"):
        assert len([c for c in split[part] if grades[c] == "LGG"]) == 1
    assert len(split["validation"]) == 6 and not set(split["train"]) & set(split["validation"])
    assert sorted(split["train"] + split["validation"]) == sorted(grades)
    assert split == make_grading_split(dict(reversed(list(grades.items()))), 0.2, seed=0)  # order does not matter

    committed = json.loads(COMMITTED_SPLIT.read_text())
    assert {k: committed[k] for k in split} == split
    assert committed["excluded"] == {"BraTS2021_00006": "no grade"}

    # A given split naming an ungraded case is refused with a clear message.
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["BraTS2021_00006"], "validation": []}))
    with pytest.raises(InputError, match="no grade"):
        load_or_make_grading_split(bad, grades)


def test_lgg_auc_is_the_probability_that_an_lgg_case_scores_above_an_hgg_case():
    assert lgg_auc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert lgg_auc([0.1], [0.9, 0.8]) == 0.0
    assert lgg_auc([0.5, 0.2], [0.4, 0.1]) == pytest.approx(0.75)  # 3 of the 4 pairs ordered
    assert lgg_auc([0.5], [0.5]) == pytest.approx(0.5)  # a tie counts one half


def test_augmentation_scales_and_shifts_brain_voxels_only_and_is_seeded():
    image = torch.zeros(4, 8, 8, 8)
    image[:, 2:6, 2:6, 2:6] = torch.randn(4, 4, 4, 4)  # a brain box that every flip maps onto itself
    out = augment(image, np.random.default_rng(3), scale=0.1, shift=0.1)
    brain = image[0] != 0
    assert torch.equal(out[0] != 0, brain)  # the background stays 0, as at inference
    for channel in range(4):  # per channel: sorted values go through one affine map, scale 1 +- 0.1, shift +- 0.1
        a, b = image[channel][brain].sort().values, out[channel][brain].sort().values
        scale, shift = np.polyfit(a.numpy(), b.numpy(), 1)
        assert 0.9 <= scale <= 1.1 and abs(shift) <= 0.1
        torch.testing.assert_close(b, a * float(scale) + float(shift), atol=1e-5, rtol=0)
    torch.testing.assert_close(augment(image, np.random.default_rng(3)), out)
    assert not torch.equal(augment(image, np.random.default_rng(4)), out)


# ---------------------------------------------------------------------------------------------- the two stages


def test_stage1_trains_only_the_primary_branch_and_stage2_starts_from_it(tmp_path):
    config = tiny_grading_config(tmp_path / "run", weight_decay=0.0, validate_every=100)
    torch.manual_seed(config.seed)
    initial = build_network("cmg", TINY_CMG).state_dict()
    first_stage2 = {}

    def keep_first_stage2_step(step, network, parts):
        if step == config.stage1_steps + 1:
            first_stage2.update({k: v.detach().clone() for k, v in network.named_parameters()})
            first_stage2["alpha"] = parts["alpha"]

    result = train_grader(config, progress=False, callback=keep_first_stage2_step)
    stage1 = ckpt.load(result["stage1"])
    assert stage1["step"] == 2 and stage1["stage"] == 0 and stage1["kind"] == "grading"
    moved = {k for k, v in stage1["model"].items() if not torch.equal(v, initial[k])}
    assert moved and all(primary_key(k) for k in moved), sorted(k for k in moved if not primary_key(k))
    assert any(k.startswith("primary_head.") for k in moved) and any(k.startswith("streams.1.") for k in moved)
    assert len(stage1["optimizer"]["param_groups"][0]["params"]) == len(
        build_network("cmg", TINY_CMG).primary_parameters())

    # Stage 2 continues from the stage-1 weights: its first (Adam) step moves each weight by at most lr.
    assert first_stage2.pop("alpha") == 1.0
    for key, value in first_stage2.items():
        assert (value - stage1["model"][key]).abs().max() <= config.lr * 1.001, key
    last = ckpt.load(result["last"])
    assert last["stage"] == 1 and last["step"] == 4
    assert len(last["optimizer"]["param_groups"][0]["params"]) == len(list(build_network("cmg", TINY_CMG).parameters()))
    assert not torch.equal(last["model"]["fused_head.1.weight"], initial["fused_head.1.weight"])
    assert last["class_weights"] == pytest.approx({"HGG": 1.0, "LGG": 1.0})  # one of each in training
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if "train/total" in r] == [0, 0, 1, 1]
    assert [r["train/alpha"] for r in records if "train/alpha" in r] == [1.0, 0.75]
    assert {r["step"] for r in records if "val/accuracy" in r} == {2, 4}  # validation at the end of each stage


def test_resume_after_kills_in_both_stages_continues_exactly(tmp_path):
    straight = train_grader(tiny_grading_config(tmp_path / "straight", stage2_steps=3), progress=False)
    run = tmp_path / "resumed"

    def kill_after(kill_step):
        def callback(step, network, parts):
            if step == kill_step:
                raise Killed
        return callback

    with pytest.raises(Killed):  # in stage 1
        train_grader(tiny_grading_config(run, stage2_steps=3), progress=False, callback=kill_after(1))
    with pytest.raises(Killed):  # in stage 2, after its first step
        train_grader(tiny_grading_config(run, stage2_steps=3), resume=True, progress=False, callback=kill_after(3))
    resumed = train_grader(tiny_grading_config(run, stage2_steps=3), resume=True, progress=False)
    assert resumed["step"] == 5 and len(resumed["losses"]) == 2
    assert resumed["losses"] == straight["losses"][3:]
    a, b = ckpt.load(straight["last"]), ckpt.load(resumed["last"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"] == b["scheduler"]
    assert json.loads((run / "split.json").read_text())["train"] == b["split"]["train"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "train/total" in line]
    assert steps == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------- end to end


def test_train_evaluate_export_and_grade_a_real_case_through_the_library(tmp_path):
    """Four real cases (2 HGG, 2 LGG): the command line trains both stages, evaluates with the library pipeline,
    exports into a temporary catalogue, and the library grades a case with the exported weights."""
    input_dir = make_input(tmp_path / "input", CASES + (LGG_CASES[1],))
    _, shared_cache = workspace()
    cache_dir = tmp_path / "cache"
    for case_id in CASES:  # reuse the session's prepared cases; only the fourth is prepared here
        target = cache_path(cache_dir, (2.0, 2.0, 2.0), case_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(cache_path(shared_cache, (2.0, 2.0, 2.0), case_id))
    run = tmp_path / "run"
    assert main(["train-grader", "--data-dir", str(input_dir), "--cache-dir", str(cache_dir), "--run-dir", str(run),
                 "--network-config", json.dumps(TINY_CMG), "--patch-size", "32", "32", "32", "--stage1-steps", "2",
                 "--stage2-steps", "2", "--val-fraction", "0.5", "--threads", "1", "--device", "cpu", "--quiet"]) == 0
    split = json.loads((run / "split.json").read_text())
    for part in ("train", "validation"):
        assert sorted(split["grades"][c] for c in split[part]) == ["HGG", "LGG"]  # one LGG in each part

    assert main(["evaluate-grader", "--checkpoint", str(run), "--data-dir", str(input_dir), "--device", "cpu"]) == 0
    with open(run / "grading_validation.csv", newline="") as stream:
        rows = {r["case_id"]: r for r in csv.DictReader(stream)}
    assert sorted(rows) == split["validation"]
    metrics = json.loads((run / "grading_validation.json").read_text())
    assert metrics["counts"] == {"HGG": 1, "LGG": 1} and metrics["auc"] in (0.0, 0.5, 1.0)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5 * sum(metrics["recall"].values()))

    catalogue = tmp_path / "catalogue" / "models.json"
    assert main(["export-grader", "--checkpoint", str(run), "--name", "tiny_cmg", "--catalogue", str(catalogue)]) == 0
    entry = json.loads(catalogue.read_text())["models"][0]
    assert entry["task"] == "grading" and entry["network"] == "cmg" and entry["config"] == TINY_CMG
    assert entry["patch_size"] == [32, 32, 32] and entry["spacing_mm"] == [2.0, 2.0, 2.0]
    assert entry["split"]["validation"] == split["validation"] and entry["training"]["steps"]["done"] == 4
    assert set(entry["training"]["class_weights"]) == {"HGG", "LGG"} and entry["metrics"]["cases"] == 2
    assert "NOT a validated grader" in entry["notes"]
    loaded = Catalogue.load([catalogue])
    assert loaded.entry("tiny_cmg", "grading").details["notes"] == entry["notes"]

    case_id = split["validation"][0]
    case, _ = read_case(case_files_in(input_dir / case_id))
    pipeline = Pipeline(model=None, grade=True, catalogue=loaded, grading_model="tiny_cmg", device="cpu")
    probabilities = pipeline.grade(case)
    assert set(probabilities) == {"HGG", "LGG"} and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert probabilities["HGG"] == pytest.approx(float(rows[case_id]["p_HGG"]), abs=1e-4)
