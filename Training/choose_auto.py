"""Measure the choices of the model "auto" and write them into the catalogue's "auto" table.

Each segmentation model of the catalogue segments each validation case once on the CPU (precision auto, timed,
as the library runs it); every combination of the models is then scored by averaging its members' region
probabilities on the case's brain crop, exactly as the library's Ensemble does. So all 2^N - 1 choices cost N
runs per case. A choice's seconds per case are the sum of its members' plus the postprocessing. All models must
record the same validation cases. The library then takes, per case, the most accurate choice that runs on the
modalities present within `cpu_seconds_limit` (auto_choice.py). The choices it can take (for any set of present
modalities, on a CPU or a GPU) then get their BraTS clean-up chosen on the same cases (tune_cleanup.tune), and
their row's Dice is the Dice after it. The choice is made on the same cases that report its Dice, so its Dice is an
optimistic estimate; the table says so.
"""

import dataclasses
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from BrainTumorFusionLib.choices import AUTO_CPU_SECONDS_LIMIT
from BrainTumorFusionLib.engine.auto_choice import choose, is_current
from BrainTumorFusionLib.engine.catalogue import SHIPPED_CATALOGUE, AutoTable, Catalogue, MeasuredChoice
from BrainTumorFusionLib.engine.inference import keeps_dice_in_bf16_here
from BrainTumorFusionLib.engine.postprocessing import Cleanup, clean_labels, regions_to_labels, uncrop
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.file_io import read_case
from BrainTumorFusionLib.modalities import MODALITIES

from .data import REGIONS, case_folder, discover, labels_file, read_labels_on_case_grid, write_csv, write_json
from .evaluate import catalogue_segmenter
from .metrics import region_metrics
from .tune_cleanup import tumor_box, tune


def measure(data_dir, catalogue_path, progress=True, printer=print, keep_seconds=False, timed_catalogue=None):
    """Rows {members, dice, worst_wt, cpu_seconds, cleanup} for every combination of the catalogue's segmentation
    models, most accurate first. keep_seconds: each row's seconds are those its current table row records (same
    members and weights), not this machine's: Dice and clean-up are re-measured on any machine while the budget
    stays judged on the hardware the table was timed on. timed_catalogue: the catalogue JSON whose table timed
    them, when models were retrained since (see recorded_seconds)."""
    shipped = Path(catalogue_path).resolve() == SHIPPED_CATALOGUE.resolve()
    catalogue = Catalogue.load([] if shipped else [catalogue_path])
    timed = Catalogue.load([timed_catalogue]) if timed_catalogue else None
    recorded = recorded_seconds(catalogue, timed) if keep_seconds else None
    names = catalogue.names("segmentation")
    ensemble, split = catalogue_segmenter("ensemble", names, catalogue)  # refuses models without one common split
    models = ensemble.members
    cases = discover(data_dir)
    combos = [combo for size in range(1, len(names) + 1) for combo in itertools.combinations(range(len(names)), size)]
    labels = {combo: [] for combo in combos}  # per case: (labels on the brain crop, the crop)
    seconds = {combo: [] for combo in combos}
    truths, voxel_ml = [], []
    for case_id in tqdm(split["validation"], desc="Measuring", unit="case", disable=not progress):
        case, _ = read_case(cases[case_id])
        truths.append(read_labels_on_case_grid(labels_file(case_folder(cases[case_id])), case.image.shape[1:],
                                               case.ijk_to_ras))
        voxel_ml.append(case.voxel_volume_ml)
        probabilities, member_seconds, crop = [], [], None
        for model in models:
            start = time.perf_counter()
            crop_probabilities, crop = model.crop_probabilities(case, "cpu", lambda *_: None, precision="auto")
            member_seconds.append(time.perf_counter() - start)
            probabilities.append(crop_probabilities)
        for combo in combos:
            start = time.perf_counter()
            labels[combo].append((regions_to_labels(np.mean([probabilities[i] for i in combo], axis=0)), crop))
            post = time.perf_counter() - start
            seconds[combo].append(sum(member_seconds[i] for i in combo) + post)

    def row(combo, cleanup=Cleanup()):
        scores, extra = [], 0.0
        for (crop_labels, crop), truth, ml in zip(labels[combo], truths, voxel_ml):
            start = time.perf_counter()
            cleaned = clean_labels(crop_labels, ml, cleanup)
            extra += time.perf_counter() - start
            scores.append(region_metrics(*tumor_box(uncrop(cleaned, crop, truth.shape), truth)))  # same Dice
        members = [names[i] for i in combo]
        timed = float(np.mean(seconds[combo])) + extra / len(truths)
        return {"members": members,
                "dice": {region: float(np.mean([s[f"dice_{region}"] for s in scores])) for region in REGIONS},
                "worst_wt": float(min(s["dice_WT"] for s in scores)),
                "cpu_seconds": timed if recorded is None else recorded[frozenset(members)],
                "cleanup": {k: v for k, v in dataclasses.asdict(cleanup).items() if v}}

    rows = {combo: row(combo) for combo in combos}
    for combo in takeable(rows, catalogue):
        printer(f"\nClean-up for {'+'.join(rows[combo]['members'])}:")
        pairs = [(case_id, uncrop(crop_labels, crop, truth.shape), truth, ml)
                 for case_id, (crop_labels, crop), truth, ml
                 in zip(split["validation"], labels[combo], truths, voxel_ml)]
        rows[combo] = row(combo, tune(pairs, printer))
    return sorted(rows.values(), key=lambda row: -sum(row["dice"].values())), catalogue, len(split["validation"])


# What a model's seconds per case depend on; the weights' values do not change them.
SPEED_FIELDS = ("network", "config", "spacing_mm", "patch_size", "whole_window")


def runs_alike(entry, timed_entry):
    """Whether two catalogue entries take the same time per case: same network, configuration, grid, window and
    CPU precision verdict on this CPU's kind (weights may differ: a retrained model)."""
    return (all(getattr(entry, field) == getattr(timed_entry, field) for field in SPEED_FIELDS)
            and keeps_dice_in_bf16_here(entry.bf16_verdicts) == keeps_dice_in_bf16_here(timed_entry.bf16_verdicts))


def recorded_seconds(catalogue, timed=None):
    """{member set: cpu_seconds} of the table of `timed` (default: the catalogue itself) for every combination
    whose members are in the catalogue and run alike there; SystemExit unless that covers every combination."""
    timed = timed or catalogue
    seconds = {frozenset(choice.member_names): choice.cpu_seconds for choice in timed.auto.choices
               if is_current(timed, choice) and all(
                   name in catalogue.entries and runs_alike(catalogue.entries[name], timed.entries[name])
                   for name in choice.member_names)}
    combos = 2 ** len(catalogue.names("segmentation")) - 1
    if len(seconds) != combos:
        raise SystemExit(f"--keep-seconds needs the table to hold all {combos} combinations measured with the current "
                         f"weights, or with weights of networks that run alike (--timed-catalogue); it holds "
                         f"{len(seconds)}. Time them: run choose-auto without --keep-seconds.")
    return seconds


def takeable(rows, catalogue):
    """The combinations auto_choice.choose takes for some set of present modalities, on a CPU or a GPU."""
    table = AutoTable(choices=tuple(MeasuredChoice(
        members=tuple((name, catalogue.entries[name].sha256) for name in row["members"]), dice=row["dice"],
        cpu_seconds=row["cpu_seconds"], worst_wt=row["worst_wt"]) for row in rows.values()))
    measured = Catalogue(catalogue.entries.values(), table)
    taken = set()
    for present in itertools.product((False, True), repeat=len(MODALITIES)):
        for on_cpu in (True, False):
            try:
                choice, _ = choose(measured, present, on_cpu)
            except InputError:  # no choice runs on these modalities
                continue
            taken.add(tuple(choice.member_names))
    return [combo for combo in rows if tuple(rows[combo]["members"]) in taken]


def hardware():
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_table(rows, catalogue, catalogue_path, cases, limit=AUTO_CPU_SECONDS_LIMIT, keep_seconds=False):
    """The "auto" field of the catalogue JSON: every measured choice with its members' weights hashes."""
    data = json.loads(Path(catalogue_path).read_text())
    data["auto"] = {
        "cpu_seconds_limit": limit, "hardware": catalogue.auto.hardware if keep_seconds else hardware(),
        "measured_with": "python -m Training choose-auto", "measured_on": time.strftime("%Y-%m-%d"),
        "note": (f"Dice: mean over the {cases} validation cases (four modalities), on which the choice and its "
                 "clean-up are also made: an optimistic estimate; after the row's clean-up (islands below the "
                 "volumes in mL removed), none where the row has no cleanup. cpu_seconds: network and "
                 "postprocessing per case, precision auto, timed on the table's hardware."),
        "choices": [{"members": [{"name": name, "weights_sha256": catalogue.entries[name].sha256}
                                 for name in row["members"]],
                     "dice": {k: round(v, 4) for k, v in row["dice"].items()},
                     "worst_wt": round(row["worst_wt"], 4), "cpu_seconds": round(row["cpu_seconds"], 2),
                     **({"cleanup": row["cleanup"]} if row["cleanup"] else {})}
                    for row in rows]}
    write_json(data, catalogue_path)


def choose_auto(data_dir, catalogue_path, output_csv=None, progress=True, keep_seconds=False, timed_catalogue=None):
    rows, catalogue, cases = measure(data_dir, catalogue_path, progress, keep_seconds=keep_seconds,
                                     timed_catalogue=timed_catalogue)
    write_table(rows, catalogue, catalogue_path, cases, keep_seconds=keep_seconds)
    if output_csv:
        write_csv([{"members": "+".join(row["members"]), **{f"dice_{k}": f"{v:.4f}" for k, v in row["dice"].items()},
                    "worst_wt": f"{row['worst_wt']:.4f}", "cpu_seconds": f"{row['cpu_seconds']:.2f}",
                    "cleanup": json.dumps(row["cleanup"]) if row["cleanup"] else ""} for row in rows],
                  ("members", "dice_WT", "dice_TC", "dice_ET", "worst_wt", "cpu_seconds", "cleanup"), output_csv)
    return rows
