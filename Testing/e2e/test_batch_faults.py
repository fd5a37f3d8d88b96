"""Batches that meet faults: bad cases, reruns with other settings, parallel parts, long names, Ctrl-C, stale
temporaries, too little memory; and the preview picture. Inputs are small crops of real cases (batch_cases)."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.app import cli
from BrainTumorFusionLib.app.batch import part, run_batch
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.memory import needed_bytes
from BrainTumorFusionLib.engine.pipeline import Pipeline
from Testing.batch_cases import (
    cli_command,
    cli_environment,
    intensity_catalogue,
    random_hafb_catalogue,
    settings_for,
    small_input,
    write_small_case,
)
from Testing.plumbing import IntensityNet, write_catalogue
from Testing.realdata import REPO

SPIKE_Z = 15.0  # z-scores of real brain tissue stay far below; a block of int16 maximum goes far above


class FragileNet(IntensityNet):
    """The intensity stand-in failing as a real network can, chosen by the data: a MemoryError (what torch raises
    when a CPU allocation fails) for a spike in T1ce, a RuntimeError for a spike in FLAIR."""

    def forward(self, x, present=None):
        if x[:, 1].max() > SPIKE_Z:
            raise MemoryError()
        if x[:, 3].max() > SPIKE_Z:
            raise RuntimeError("stand-in layer: values out of range")
        return super().forward(x, present)


networks.register("fragile", FragileNet)


def read_summary(folder):
    with open(folder / "summary.csv", newline="") as stream:
        return {row["case_id"]: row for row in csv.DictReader(stream)}


def read_record(folder, case_id):
    return json.loads((folder / f"{case_id}.json").read_text())


def spike(folder, case_id, role):
    """Set a 4-voxel block of a case's image to the int16 maximum."""
    path = folder / case_id / f"{case_id}_{role}.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    centre = [n // 2 for n in array.shape]
    array[tuple(slice(c, c + 4) for c in centre)] = np.iinfo(np.int16).max
    spiked = sitk.GetImageFromArray(array)
    spiked.CopyInformation(image)
    sitk.WriteImage(spiked, str(path), True)


def temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith((".btf-", ".partial-"))]


def test_one_bad_case_of_each_kind_fails_alone_and_the_run_exits_1(tmp_path, capsys):
    inputs = small_input(tmp_path, ("good", "two_t1", "unreadable", "blocked", "network_error", "out_of_memory"))
    sitk.WriteImage(sitk.ReadImage(str(inputs / "two_t1" / "two_t1_t1.nii.gz")), str(inputs / "two_t1" / "T1.nrrd"))
    (inputs / "unreadable" / "unreadable_t1.nii.gz").write_bytes(b"not an image")
    spike(inputs, "network_error", "flair")
    spike(inputs, "out_of_memory", "t1ce")
    output = tmp_path / "out"
    (output / "blocked_seg.nii.gz").mkdir(parents=True)  # a folder where the label file should go
    catalogue = write_catalogue(tmp_path, "fragile", FragileNet().state_dict(), spacing_mm=[2.0, 2.0, 2.0])

    code = cli.main(["segment", "--input-dir", str(inputs), "--output-dir", str(output), "--model", "fragile",
                     "--catalogue", str(catalogue), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1 and "1 of 6 cases done" in captured.out
    summary = read_summary(output)
    assert summary["good"]["status"] == "done" and float(summary["good"]["WT_ml"]) > 0
    reasons = {case_id: row["message"] for case_id, row in summary.items() if row["status"] == "failed"}
    assert "two T1 images: T1.nrrd and two_t1_t1.nii.gz" in reasons["two_t1"]
    assert "Cannot read the T1 image" in reasons["unreadable"]
    assert "blocked_seg.nii.gz" in reasons["blocked"] and "Is a directory" in reasons["blocked"]
    assert reasons["network_error"].startswith("Unexpected RuntimeError: stand-in layer: values out of range")
    assert "stand-in layer" in read_record(output, "network_error")["traceback"]
    assert reasons["out_of_memory"].startswith("Ran out of memory on this case (estimated to need about")
    for case_id in reasons:  # failed cases keep no output file, not even the part written before the failure
        assert not (output / f"{case_id}.seg.nrrd").exists() and read_record(output, case_id)["status"] == "failed"
    assert temporaries(output) == []
    assert "Failed: blocked, network_error, out_of_memory, two_t1, unreadable" in captured.err


def test_rerun_with_another_model_or_grade_is_refused_until_overwrite(tmp_path, capsys):
    inputs = small_input(tmp_path)
    catalogue = intensity_catalogue(tmp_path / "models")
    intensity_catalogue(tmp_path / "models", name="shifted", offset=0.5)
    output = tmp_path / "out"

    def segment(*options):
        code = cli.main(["segment", "--input-dir", str(inputs), "--output-dir", str(output), "--catalogue",
                         str(catalogue), "--device", "cpu", "--grading-model", "constant", *options])
        return code, capsys.readouterr()

    assert segment("--model", "intensity")[0] == 0
    first = read_summary(output)
    code, said = segment("--model", "shifted")
    assert code == 2 and "already holds results of 2 of these cases made with other settings" in said.err
    assert "case_a: model intensity, now shifted; segmentation weights intensity (" in said.err
    assert "--overwrite" in said.err and "and 1 more" in said.err
    code, said = segment("--model", "intensity", "--grade")
    assert code == 2 and "grading none, now constant (" in said.err
    assert read_summary(output) == first  # refused before anything changed

    code, said = segment("--model", "intensity", "--grade", "--overwrite")
    assert code == 0 and "2 of 2 cases done" in said.out
    regraded = read_summary(output)
    assert all(float(row["HGG"]) > 0.5 for row in regraded.values())
    assert read_record(output, "case_a")["settings"]["grading_model"]["name"] == "constant"
    code, said = segment("--model", "intensity", "--grade")  # same settings: skipped
    assert code == 0 and "already done" in said.err and read_summary(output) == regraded


def test_parts_split_the_sorted_cases_deterministically():
    cases = [f"case{i:02d}" for i in range(10)]
    shares = [part(list(reversed(cases)), 3, k) for k in range(3)]
    assert shares[1] == ["case01", "case04", "case07"]  # case i goes to part i % 3
    assert sorted(sum(shares, [])) == cases
    with pytest.raises(SystemExit) as usage:
        cli.main(["segment", "--input-dir", "in", "--output-dir", "out", "--num-parts", "3", "--part-id", "3"])
    assert usage.value.code == 2


def segment_in_child(argv, log, prelude=""):
    """A fresh interpreter running the command line with the stand-in networks registered (plumbing), after the
    Python lines of `prelude`. Not a fork of this process: a fork inherits thread pools (torch's OpenMP, ITK's)
    whose threads do not exist in the child, and two forked children hung on such a lock after earlier tests had
    used them."""
    # plumbing is loaded from its file: Testing/ on the path would make Testing/slicer part of the slicer package
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('plumbing', sys.argv[1]); "
            f"spec.loader.exec_module(importlib.util.module_from_spec(spec))\n{prelude}\n"
            "from BrainTumorFusionLib.app import cli; sys.exit(cli.main(sys.argv[2:]))")
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-c", code, str(REPO / "Testing" / "plumbing.py"), *argv],
                                stdout=stream, stderr=subprocess.STDOUT, env=cli_environment())


def test_two_processes_sharing_one_output_folder_keep_every_row(tmp_path):
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    runs = [segment_in_child(
        ["segment", "--input-dir", str(small_input(tmp_path / name, [f"{name}{i}" for i in range(3)])),
         "--output-dir", str(output), "--model", "intensity", "--catalogue", str(catalogue), "--device", "cpu"],
        tmp_path / f"{name}.log") for name in ("a", "b")]
    codes = [run.wait(timeout=300) for run in runs]
    assert codes == [0, 0], [(tmp_path / f"{n}.log").read_text()[-2000:] for n in "ab"]
    summary = read_summary(output)
    assert sorted(summary) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert {row["status"] for row in summary.values()} == {"done"}


# Each case a child computes adds a line to COUNT; its first case waits (up to a minute) until the other child is
# inside a case too, so the two runs overlap whatever their start-up times.
COUNTING_PRELUDE = """
import os, time
from pathlib import Path
from BrainTumorFusionLib.engine.pipeline import Pipeline
folder, run = Path(os.environ["COUNT"]).parent, Pipeline.run
def counting_run(self, case, *args, **kwargs):
    with open(os.environ["COUNT"], "a") as stream:
        stream.write(case.name + "\\n")
    (folder / f"inside-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(folder.glob("inside-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return run(self, case, *args, **kwargs)
Pipeline.run = counting_run
"""


def test_the_same_command_run_twice_at_once_computes_each_case_once(tmp_path, monkeypatch):
    catalogue = intensity_catalogue(tmp_path / "models")
    inputs = small_input(tmp_path, [f"c{i}" for i in range(4)])
    output = tmp_path / "out"
    (tmp_path / "count").mkdir()
    monkeypatch.setenv("COUNT", str(tmp_path / "count" / "computed"))
    argv = ["segment", "--input-dir", str(inputs), "--output-dir", str(output), "--model", "intensity",
            "--catalogue", str(catalogue), "--device", "cpu"]
    runs = [segment_in_child(argv, tmp_path / f"{name}.log", COUNTING_PRELUDE) for name in "ab"]
    codes = [run.wait(timeout=300) for run in runs]
    logs = [(tmp_path / f"{name}.log").read_text() for name in "ab"]
    assert codes == [0, 0], [log[-2000:] for log in logs]
    computed = (tmp_path / "count" / "computed").read_text().split()
    assert sorted(computed) == ["c0", "c1", "c2", "c3"], logs  # each case once, by one run or the other
    assert re.search(r"\d of 4 cases done, \d claimed by another run", "".join(logs))  # the run that came second
    assert {case: row["status"] for case, row in read_summary(output).items()} == dict.fromkeys(
        ["c0", "c1", "c2", "c3"], "done")
    assert not list(output.glob(".*.claim"))


def test_a_live_claim_leaves_its_case_to_its_run_and_a_stale_one_is_taken_over(tmp_path):
    inputs = small_input(tmp_path, ("live", "dead", "old"))
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    output.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = socket.gethostname()
        for case_id, pid, claim_host in (("live", sleeper.pid, host), ("dead", int(ended.stdout), host),
                                         ("old", 1, "another-host")):
            (output / f".{case_id}.claim").write_text(json.dumps({"pid": pid, "host": claim_host,
                                                                   "started": time.time()}))
        seven_hours_ago = time.time() - 7 * 3600  # another host's claim holds until it is 6 hours old
        os.utime(output / ".old.claim", (seven_hours_ago, seven_hours_ago))
        rows = run_batch(inputs, output, settings_for(catalogue), lambda: Pipeline(
            model="intensity", device="cpu", catalogue=Catalogue.load([catalogue])), show_progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    status = {row["case_id"]: (row["status"], row["message"]) for row in rows}
    assert status["dead"][0] == status["old"][0] == "done" and status["live"][0] == "claimed"
    assert status["live"][1].startswith(f"claimed by another run (pid {sleeper.pid} on {host} since ")
    assert sorted(read_summary(output)) == ["dead", "old"]  # the live claim's run writes its own record
    assert sorted(p.name for p in output.glob(".*.claim")) == [".live.claim"]


def test_parts_of_one_input_each_run_their_share(tmp_path):
    inputs = small_input(tmp_path, ("c1", "c2", "c3"))
    catalogue = intensity_catalogue(tmp_path / "models")
    ran = []

    class Counting(Pipeline):
        def run(self, case, progress=None, should_cancel=None):
            ran.append(case.name)
            return super().run(case, progress, should_cancel)

    for part_id in (0, 1):
        rows = run_batch(inputs, tmp_path / "out", settings_for(catalogue), lambda: Counting(
            model="intensity", device="cpu", catalogue=Catalogue.load([catalogue])), show_progress=False,
            num_parts=2, part_id=part_id)
        assert [row["case_id"] for row in rows] == [["c1", "c3"], ["c2"]][part_id]
    assert ran == ["c1", "c3", "c2"] and sorted(read_summary(tmp_path / "out")) == ["c1", "c2", "c3"]


def test_a_230_character_case_name_is_segmented_and_a_longer_one_fails_alone(tmp_path):
    long_id, too_long = "x" * 230, "y" * 250
    inputs = tmp_path / "input"
    write_small_case(inputs, long_id)
    write_small_case(inputs, too_long, names={role: f"{role}.nii.gz" for role in ("t1", "t1ce", "t2", "flair")})
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    rows = run_batch(inputs, output, settings_for(catalogue), lambda: Pipeline(
        model="intensity", device="cpu", catalogue=Catalogue.load([catalogue])), show_progress=False, preview=True)
    status = {row["case_id"]: (row["status"], row["message"]) for row in rows}
    assert status[long_id][0] == "done"
    assert status[too_long][0] == "failed" and "too long for its output file names (262 bytes" in status[too_long][1]
    assert "Rename the case folder to at most 243 bytes" in status[too_long][1]
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [".summary.csv.lock", "summary.csv", f"{too_long}.json"]
        + [long_id + end for end in (".json", ".seg.nrrd", "_seg.nii.gz", "_preview.png")])


def test_ctrl_c_stops_with_one_line_and_no_temporary(tmp_path):
    catalogue = random_hafb_catalogue(tmp_path)
    inputs = tmp_path / "input"
    for case_id in ("d1", "d2", "d3"):
        write_small_case(inputs, case_id, size=(160, 160, 120))
    output = tmp_path / "out"
    run = subprocess.Popen(cli_command("segment", "--input-dir", inputs, "--output-dir", output, "--model",
                                       "random-hafb", "--catalogue", catalogue, "--device", "cpu"),
                           cwd=REPO, env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           # a shell's background job (`make test &`) ignores SIGINT, and children inherit that: the
                           # run must see Ctrl-C as a terminal's foreground process does
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (output / "d1.json").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)  # while d2 runs
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("Interrupted: stopped without leaving a half-written file")
    assert read_record(output, "d1")["status"] == "done" and not (output / "d2.json").exists()
    assert temporaries(output) == [] and not (output / "d2_seg.nii.gz").exists()


def test_stale_temporaries_are_removed_when_a_batch_starts(tmp_path):
    inputs = small_input(tmp_path, ("case_a",))
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    output.mkdir()
    old = time.time() - 3600
    for name in (".btf-0123456789ab.partial.nii.gz", ".partial-0123456789ab.seg.nrrd",  # left by killed runs
                 ".partial-12345-case_a_seg.nii.gz"):  # the first versions' name: pid and final name
        (output / name).write_bytes(b"half a file")
        os.utime(output / name, (old, old))
    (output / ".btf-abcdefabcdef.partial.json").write_text("{")  # another part is writing it now
    run_batch(inputs, output, settings_for(catalogue), lambda: Pipeline(
        model="intensity", device="cpu", catalogue=Catalogue.load([catalogue])), show_progress=False)
    assert temporaries(output) == [".btf-abcdefabcdef.partial.json"]


def test_a_case_that_cannot_fit_in_memory_fails_with_the_figures(tmp_path):
    inputs = small_input(tmp_path, ("case_a",))
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    pipeline = Pipeline(model="intensity", device="cpu", catalogue=Catalogue.load([catalogue]))
    [row] = run_batch(inputs, output, settings_for(catalogue), pipeline, show_progress=False,
                      available_memory=lambda: 64 * 2**20)
    need = needed_bytes((96, 96, 64), (1.0, 1.0, 1.0), [pipeline.segmenter])
    assert row["status"] == "failed"
    assert row["message"].startswith(f"Not enough memory for this case: it needs about {need / 2**20:.0f} MB, "
                                     "and 64 MB is available.")
    assert sorted(p.name for p in output.iterdir()) == [".summary.csv.lock", "case_a.json", "summary.csv"]


def test_preview_shows_the_labels_over_flair_and_t1ce(tmp_path):
    inputs = small_input(tmp_path, ("case_a",))
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    [row] = run_batch(inputs, output, settings_for(catalogue), lambda: Pipeline(
        model="intensity", device="cpu", catalogue=Catalogue.load([catalogue])), show_progress=False, preview=True)
    assert row["status"] == "done"
    with Image.open(output / "case_a_preview.png") as picture:
        assert picture.format == "PNG"
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    edema = (green > red + 40) & (green > blue + 40)  # the edema colour over grey
    assert edema.sum() > 500 and pixels.shape[1] > pixels.shape[0]  # three slices side by side, two rows
    grey = (red == green) & (green == blue) & (red > 0)
    assert np.unique(red[grey]).size > 50  # the images themselves, not a blank panel
