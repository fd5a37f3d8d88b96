"""RANO measurements of a model's labels against the same measurements of the ground truth, on the shared cases:
Bland-Altman bias and 95 % limits of agreement of the SPD (mm2) and the enhancing-tumor volume (mL), the per-case
"measurable disease present" call (a 2x2 table) and the lesion counts (docs/measurements.md).

A case's model labels come, when a finished fold of the cross-validation campaign held it out, from that fold's saved
probabilities (`<cv-runs>/<model>/foldK/oof/<case>.npz`, "oof"); otherwise from the shipped model run by the library
("in-sample": the shipped model was trained or chosen on most shared cases, so those rows are optimistic). Both get
the catalogue's measured clean-up of the model; differences are model minus truth.

    .venv/bin/python tools/measurement_agreement.py --data-dir ../shared/data/brats \
        --plot docs/images/rano_agreement.png --output-csv runs/rano_agreement.csv
"""

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.engine.auto_choice import measured_cleanup
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.engine.postprocessing import brats_labels, clean_labels, regions_to_labels, uncrop
from BrainTumorFusionLib.files.file_io import read_case
from BrainTumorFusionLib.measurements.rano import measure
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of, same_grid
from Training.data import case_folder, discover, labels_file, read_labels_on_case_grid
from Training.evaluate import load_probabilities

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("case", "source", "truth_spd_mm2", "model_spd_mm2", "truth_et_ml", "model_et_ml", "truth_measurable",
           "model_measurable", "truth_lesions", "model_lesions", "truth_targets", "model_targets")


def oof_files(cv_runs, model):
    """{case: probabilities file} of the finished folds (those with an EVALUATED marker)."""
    return {path.stem: path for fold in sorted(Path(cv_runs, model).glob("fold*")) if (fold / "EVALUATED").is_file()
            for path in sorted((fold / "oof").glob("*.npz"))}


class ModelLabels:
    """The model's labels of a case on its reference (T1ce) grid: out of fold where saved, else from the library."""

    def __init__(self, model, oof):
        self.model, self.oof, self.pipeline = model, oof, None
        self.cleanup = measured_cleanup(Catalogue.load(), [model])

    def __call__(self, case_id, files, shape, ijk_to_ras):
        if case_id in self.oof:
            probabilities, crop = load_probabilities(self.oof[case_id])
            labels = uncrop(regions_to_labels(probabilities), crop, shape)
            voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000
            return clean_labels(labels, voxel_ml, self.cleanup), "oof"
        if self.pipeline is None:  # fp32, as Training's evaluate: results independent of the CPU's bfloat16
            self.pipeline = Pipeline(model=self.model, device="cpu", precision="fp32")
        result = self.pipeline.run(read_case(files)[0])
        if not same_grid(result.labels.shape, result.ijk_to_ras, shape, ijk_to_ras):
            raise RuntimeError(f"{case_id}: the model's labels lie on another grid than the T1ce image")
        return result.labels, "in-sample"


def targets(measurements):
    """The target lesions' diameters, 'longest x perpendicular' (mm); '*' marks a thin enhancing rim."""
    return "; ".join(f"{lesion.longest_mm:.1f}x{lesion.perpendicular_mm:.1f}{'*' if lesion.thin_rim else ''}"
                     for lesion in measurements.targets)


def measure_case(case_id, files, model_labels):
    reference = sitk.ReadImage(str(files.files["t1ce"]))
    shape, ijk_to_ras = sitk.GetArrayViewFromImage(reference).shape, ijk_to_ras_of(reference)
    truth = measure(brats_labels(read_labels_on_case_grid(labels_file(case_folder(files)), shape, ijk_to_ras)),
                    ijk_to_ras)
    labels, source = model_labels(case_id, files, shape, ijk_to_ras)
    model = measure(labels, ijk_to_ras)
    row = {"case": case_id, "source": source}
    for who, m in (("truth", truth), ("model", model)):
        row.update({f"{who}_spd_mm2": m.spd_mm2, f"{who}_et_ml": m.volumes_ml["ET"],
                    f"{who}_measurable": m.measurable_count, f"{who}_lesions": len(m.lesions),
                    f"{who}_targets": targets(m)})
    return row


def bland_altman(rows, quantity):
    """n, bias (mean of model - truth), SD of the differences, standard error of the bias, 95 % limits."""
    differences = np.array([row[f"model_{quantity}"] - row[f"truth_{quantity}"] for row in rows], dtype=float)
    n = len(differences)
    bias = float(differences.mean()) if n else float("nan")
    sd = float(differences.std(ddof=1)) if n > 1 else float("nan")
    return {"n": n, "bias": bias, "sd": sd, "se": sd / np.sqrt(n) if n else float("nan"),
            "low": bias - 1.96 * sd, "high": bias + 1.96 * sd}


def measurable_table(rows):
    """{(truth present, model present): cases} of the call "measurable disease present"."""
    table = {(t, m): 0 for t in (True, False) for m in (True, False)}
    for row in rows:
        table[row["truth_measurable"] > 0, row["model_measurable"] > 0] += 1
    return table


QUANTITIES = (("spd_mm2", "SPD (mm2)"), ("et_ml", "ET volume (mL)"))


def summary(rows):
    groups = (("out of fold", [r for r in rows if r["source"] == "oof"]), ("all cases", rows))
    lines = ["| quantity | cases | n | bias | SD | SE of bias | 95 % limits of agreement |", "|---|---|---:|---:|---:|---:|---|"]
    for quantity, title in QUANTITIES + (("lesions", "lesions (count)"), ("measurable", "measurable lesions")):
        for group, members in groups:
            s = bland_altman(members, quantity)
            d = 2 if quantity == "et_ml" else 1
            lines.append(f"| {title} | {group} | {s['n']} | {s['bias']:+.{d}f} | {s['sd']:.{d}f} | {s['se']:.{d}f} "
                         f"| {s['low']:+.{d}f} to {s['high']:+.{d}f} |")
    for group, members in groups:
        t = measurable_table(members)
        agree = t[True, True] + t[False, False]
        lines += ["", f"Measurable disease present, {group} ({agree} of {len(members)} agree):", "",
                  "| truth \\ model | present | absent |", "|---|---:|---:|",
                  f"| present | {t[True, True]} | {t[True, False]} |", f"| absent | {t[False, True]} | {t[False, False]} |"]
    return "\n".join(lines)


def plot(rows, path, model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (quantity, title) in zip(axes, QUANTITIES):
        for source, marker, colour in (("oof", "o", "tab:blue"), ("in-sample", "x", "tab:orange")):
            members = [r for r in rows if r["source"] == source]
            truth = np.array([r[f"truth_{quantity}"] for r in members], dtype=float)
            ours = np.array([r[f"model_{quantity}"] for r in members], dtype=float)
            ax.scatter((truth + ours) / 2, ours - truth, marker=marker, color=colour,
                       label=f"{'out of fold' if source == 'oof' else 'in-sample'} ({len(members)})")
        for group, members, colour in (("all", rows, "black"), ("out of fold", [r for r in rows if r["source"] == "oof"],
                                                                "tab:blue")):
            s = bland_altman(members, quantity)
            if s["n"] > 1:
                ax.axhline(s["bias"], color=colour, lw=1, label=f"bias, {group} {s['bias']:+.1f}")
                for limit in (s["low"], s["high"]):
                    ax.axhline(limit, color=colour, lw=1, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=f"{title}: {model} - truth", xlabel=f"mean of model and truth, {title}",
               ylabel=f"model - truth, {title}")
        ax.legend(fontsize=8)
    figure.suptitle("RANO measurement agreement (dashed: 95 % limits of agreement)", fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="case folders with <case>_{t1,t1ce,t2,flair,seg}.nii.gz")
    parser.add_argument("--cv-runs", default=str(ROOT / "runs" / "cv"), help="the cross-validation campaign's runs")
    parser.add_argument("--output-csv", default=str(ROOT / "runs" / "rano_agreement.csv"))
    parser.add_argument("--plot", help="write the Bland-Altman figure (PNG) here")
    parser.add_argument("--model", default="hafb", help="a catalogue model (default hafb)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model_labels = ModelLabels(args.model, oof_files(args.cv_runs, args.model))
    rows = []
    print(f"{'case':24} {'source':9} {'SPD truth':>9} {'model':>8} {'ET mL':>6} {'model':>6} {'meas.':>5} "
          f"{'lesions':>7}")
    for case_id, files in discover(args.data_dir).items():
        row = measure_case(case_id, files, model_labels)
        rows.append(row)
        print(f"{case_id:24} {row['source']:9} {row['truth_spd_mm2']:9.1f} {row['model_spd_mm2']:8.1f} "
              f"{row['truth_et_ml']:6.2f} {row['model_et_ml']:6.2f} {row['truth_measurable']:>2}/{row['model_measurable']:<2} "
              f"{row['truth_lesions']:>3}/{row['model_lesions']:<3} {row['truth_targets']} | {row['model_targets']}",
              flush=True)
    print()
    print(summary(rows))
    Path(args.output_csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output_csv, "w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if args.plot:
        plot(rows, args.plot, args.model)
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s; CSV {args.output_csv}"
          + (f", figure {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
