"""The README's model table, generated from the shipped catalogue (`models.json`) so that it cannot drift: rewrites
the lines between `<!-- model-table:start -->` and `<!-- model-table:end -->` (Testing/unit/test_packaging.py fails
when they differ from what this prints).

    .venv/bin/python tools/model_table.py            # rewrite README.md
    .venv/bin/python tools/model_table.py --check    # exit 1 when README.md is not current
"""

import argparse
import json
import sys
from pathlib import Path

from BrainTumorFusionLib.engine.auto_choice import choose, describe
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.modalities import MODALITIES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CATALOGUE = ROOT / "BrainTumorFusion" / "Resources" / "models.json"
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def figures(entry):
    metrics = entry.get("metrics", {})
    if entry["task"] == "grading":
        return f"accuracy {metrics.get('accuracy', 0):.2f}, AUC {metrics.get('auc', 0):.2f}", ""
    dice = metrics.get("dice", {})
    lesion = metrics.get("lesion_dice", {})
    legacy = " / ".join(f"{dice[r]:.3f}" for r in ("WT", "TC", "ET")) if dice else ""
    return legacy, " / ".join(f"{lesion[r]:.2f}" for r in ("WT", "TC", "ET")) if lesion else ""


def render(catalogue=None):
    catalogue = catalogue or json.loads(CATALOGUE.read_text())
    lines = ["| model | task | what it is | modalities | Dice WT / TC / ET | lesion-wise Dice | cases | weights |",
             "|---|---|---|---|---|---|---:|---:|"]
    for entry in catalogue["models"]:
        modalities = ", ".join(entry["modalities"]) + (" (any subset)" if entry.get("handles_missing_modalities")
                                                      else "")
        legacy, lesion = figures(entry)
        megabytes = (CATALOGUE.parent / "Weights" / entry["weights"]["file"]).stat().st_size / 1e6
        lines.append(f"| `{entry['name']}` | {entry['task']} | {entry['title']} | {modalities} | {legacy} | {lesion} "
                     f"| {entry.get('metrics', {}).get('cases', '')} | {megabytes:.1f} MB |")
    shipped = Catalogue.load()
    if shipped.auto.choices:
        choice, _ = choose(shipped, (True,) * len(MODALITIES), on_cpu=True)
        dice = " / ".join(f"{choice.dice[region]:.3f}" for region in ("WT", "TC", "ET"))
        lines.append(f"| `auto` (default) | segmentation | per case the most accurate measured choice for the "
                     f"modalities present within {shipped.auto.cpu_seconds_limit:g} s on a CPU; with all four: "
                     f"{describe(choice)} | any subset | {dice} | | | |")
    lines.append("")
    lines.append("Figures: the catalogue's `metrics` (validation cases of each entry's recorded split; `cases` says how "
                 "many).")
    return "\n".join(lines)


def current_readme(text, table):
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = README.read_text()
    wanted = current_readme(text, render())
    if args.check:
        return 0 if wanted == text else 1
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
