"""Five-fold cross-validation campaign over the shared cases: every candidate network trained on each recorded fold
(`Training/splits/brats-shared-5fold/foldK.json`) with its recipe, then its held-out cases scored.

Resumable: each stage of a (network, fold) leaves a marker file when it finished, and training always runs with
`--resume`, so rerunning the same command after a kill or on a new machine (with the runs folder carried over)
continues where it stopped. Progress goes to <runs>/STATUS.md.

    git worktree add ../campaign && cd ../campaign
    nohup ../main/.venv/bin/python tools/cv_campaign.py --data-dir ../shared/data/brats --runs ../main/runs/cv \
        --cache-dir ../main/out/cache > ../main/runs/cv.log 2>&1 &
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ROOT / "Training" / "splits" / "brats-shared-5fold"
FOLDS = 5

# Each network's recipe, from scratch on a fold's training cases (2 mm, 64^3, batch 2; the loop's defaults
# otherwise). Validation is off: the held-out cases are the out-of-fold cases, so nothing may be chosen on them;
# the last step is scored.
COMMON = ["--steps", "2000", "--validate-every", "0", "--checkpoint-every", "100", "--threads", "1",
          "--workers", "1", "--quiet"]
RECIPES = {
    "hafb": ["--lr", "1e-3"],
    "segresnet": ["--lr", "3e-4"],
    "swinfuse": ["--lr", "3e-4", "--warmup-steps", "50"],
    "missu": ["--lr", "3e-4"],
}
PRETRAIN = {"swinfuse": ["--steps", "400", "--checkpoint-every", "100", "--threads", "1", "--quiet"]}


def run(command, log):
    """Run a stage with the library and Training of this script's checkout (not an editable install elsewhere), so
    that a campaign started from its own worktree (`git worktree add ../campaign`) is not changed by edits in
    progress beside it."""
    print(time.strftime("%H:%M:%S"), " ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "BrainTumorFusion"), str(ROOT)])}
    with open(log, "a") as stream:
        return subprocess.run(command, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode


def stages(network, fold, data_dir, cache_dir, run_dir):
    """(marker name, command) of each stage of one network on one fold, in order."""
    python = [sys.executable, "-m", "Training"]
    split = str(SPLITS / f"fold{fold}.json")
    where = ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--split-file", split]
    train = python + ["train", "--network", network, "--run-dir", str(run_dir), *where, *COMMON,
                      *RECIPES[network], "--resume"]
    result = []
    if network in PRETRAIN:
        pretrain_dir = run_dir.parent / f"{run_dir.name}-pretrain"
        result.append(("PRETRAINED", python + ["pretrain", "--network", network, "--run-dir", str(pretrain_dir),
                                               *where, *PRETRAIN[network], "--resume"]))
        train += ["--init-from", str(pretrain_dir / "checkpoints" / "last.pt")]
    result.append(("TRAINED", train))
    result.append(("EVALUATED", python + ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
                                          "--data-dir", str(data_dir), "--split", "validation",
                                          "--output", str(run_dir / "oof.csv"),
                                          "--save-probabilities", str(run_dir / "oof")]))
    return result


def write_status(runs, networks):
    lines = ["# Cross-validation campaign", "", "Resume: the command in tools/cv_campaign.py's docstring, from the "
             f"campaign's worktree, with --runs {runs} (finished stages are skipped, training resumes).", "",
             "| network | " + " | ".join(f"fold {k}" for k in range(FOLDS)) + " |",
             "|---|" + "---|" * FOLDS]
    for network in networks:
        cells = []
        for fold in range(FOLDS):
            done = [m for m in ("PRETRAINED", "TRAINED", "EVALUATED") if (runs / network / f"fold{fold}" / m).exists()]
            cells.append(done[-1].lower() if done else "-")
        lines.append(f"| {network} | " + " | ".join(cells) + " |")
    (runs / "STATUS.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cv")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "out" / "cache")
    parser.add_argument("--networks", default=",".join(RECIPES), help="comma-separated, in campaign order")
    args = parser.parse_args(argv)
    networks = args.networks.split(",")
    for network in networks:
        for fold in range(FOLDS):
            run_dir = args.runs / network / f"fold{fold}"
            run_dir.mkdir(parents=True, exist_ok=True)
            for marker, command in stages(network, fold, args.data_dir, args.cache_dir, run_dir):
                if (run_dir / marker).exists():
                    continue
                write_status(args.runs, networks)
                if run(command, run_dir / "campaign.log") != 0:
                    print(f"{network} fold {fold}: {marker.lower()} stage failed, see {run_dir / 'campaign.log'}",
                          flush=True)
                    break
                (run_dir / marker).touch()
    write_status(args.runs, networks)


if __name__ == "__main__":
    main()
