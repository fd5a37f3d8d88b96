"""The GPU check's plumbing (tools/gpu_check.py) without a GPU: its pure pieces, and prepare + run on
the CPU over a tiny synthetic case written as NIfTI (two shipped models, 2 training steps); the CUDA-only
out-of-memory check is reported as skipped."""

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from Testing.realdata import REPO

SPEC = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)


def test_region_dice_and_its_verdict():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2] = 2
    labels[0, 0] = 4
    assert gpu_check.region_dice(labels, labels) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    other = labels.copy()
    other[0, 0] = 1  # enhancing -> necrotic: TC unchanged, ET gone on one side
    scores = gpu_check.region_dice(other, labels)
    assert scores["WT"] == scores["TC"] == 1.0 and scores["ET"] == 0.0
    assert gpu_check.region_dice(np.zeros_like(labels), np.zeros_like(labels))["ET"] == 1.0  # both empty
    assert gpu_check.compare_labels([{"WT": 1.0, "TC": 0.99, "ET": 1.0}])[0]
    passed, figure = gpu_check.compare_labels([{"WT": 1.0, "TC": 1.0, "ET": 1.0}, {"WT": 1.0, "TC": 0.985, "ET": 1}])
    assert not passed and "TC 0.9850" in figure
    assert gpu_check.compare_grades([([0.99, 0.01], [0.975, 0.025])])[0]
    assert not gpu_check.compare_grades([([0.9, 0.1], [0.95, 0.05])])[0]


def test_loss_verdict():
    assert gpu_check.loss_verdict([1.0, 0.9, 0.8])[0]  # few steps: finite is enough
    assert not gpu_check.loss_verdict([1.0, math.nan])[0]
    assert gpu_check.loss_verdict(list(np.linspace(1.5, 0.5, 60)))[0]
    passed, figure = gpu_check.loss_verdict(list(np.linspace(0.5, 1.5, 60)))
    assert not passed and "NOT" in figure


def test_table_and_cache_size(tmp_path):
    rows = [gpu_check.row("hafb", "cuda", "fp16", 0.1234, "PASS", "min Dice 0.9990"),
            gpu_check.row("OOM fallback", "cpu", "-", None, "SKIP", "a|b")]
    table = gpu_check.format_table(["GPU check: torch x"], rows).splitlines()
    assert table[0] == "GPU check: torch x"
    assert table[2:4] == ["| check | device | precision | seconds | result |", "|---|---|---|---:|---|"]
    assert table[4] == "| hafb | cuda | fp16 | 0.123 | PASS min Dice 0.9990 |"
    assert table[5] == "| OOM fallback | cpu | - | - | SKIP a\\|b |"  # a pipe in a cell cannot split it
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    assert gpu_check.check_cache_size(tmp_path, limit=1000) == 1000
    with pytest.raises(AssertionError, match="more than"):
        gpu_check.check_cache_size(tmp_path, limit=999)
    assert gpu_check.packed_image(np.array([0.0, 1000.4])).dtype == np.int16  # raw intensities: lossless enough
    assert gpu_check.packed_image(np.array([0.0, 1.5])).dtype == np.float16  # small values keep their fraction


def write_synthetic_case(folder, case_id="synthetic_1"):
    """A BraTS-style case at 2 mm: an ellipsoid 'brain' with a tumor blob (labels 2 around 1 around 4)."""
    rng = np.random.default_rng(0)
    shape = (36, 44, 40)  # K, J, I
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    radius = ((k - 18) / 16) ** 2 + ((j - 22) / 20) ** 2 + ((i - 20) / 18) ** 2
    brain = radius < 1
    distance = np.sqrt((k - 18) ** 2 + (j - 24) ** 2 + (i - 22) ** 2)
    labels = np.where(distance < 8, 2, 0) + np.where(distance < 5, -1, 0) + np.where(distance < 3, 3, 0)
    labels = np.where(brain, labels, 0).astype(np.uint8)
    case_dir = folder / case_id
    case_dir.mkdir(parents=True)
    for index, role in enumerate(("t1", "t1ce", "t2", "flair")):
        image = (400 + 100 * index + 300 * (labels > 0) + rng.normal(0, 20, shape)) * brain
        volume = sitk.GetImageFromArray(image.astype(np.int16))
        volume.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(volume, str(case_dir / f"{case_id}_{role}.nii.gz"))
    seg = sitk.GetImageFromArray(labels)
    seg.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(seg, str(case_dir / f"{case_id}_seg.nii.gz"))
    return case_id


@pytest.mark.slow
def test_prepare_and_run_on_the_cpu(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        case_id = write_synthetic_case(tmp_path / "data")
        cache = tmp_path / "cache"
        manifest = gpu_check.prepare(cache, tmp_path / "data", 1, ["transfuse", "cmg"], case_ids=[case_id])
        assert manifest["cases"] == [case_id] and set(manifest["models"]) == {"transfuse", "cmg"}
        assert (cache / "train" / "sp2x2x2" / f"{case_id}.npz").is_file()  # Training's cache format
        case, references = gpu_check.stored_case(cache / "cases" / f"{case_id}.npz")
        assert references["labels"]["transfuse"].shape == case.image.shape[1:]
        assert references["grades"]["cmg"].shape == (2,)
        capsys.readouterr()
        code = gpu_check.main(["run", "--cache", str(cache), "--device", "cpu", "--steps", "2", "--train-network",
                               "segresnet", "--models", "transfuse,cmg", "--precision", "fp32"])
        out = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert code == 0, out
    assert "NOT RUN ON A GPU" in out
    assert "| transfuse | cpu | fp32 |" in out and "PASS min Dice 1.0000" in out
    assert "| cmg | cpu | fp32 |" in out and "PASS max difference 0.0000" in out
    assert "| OOM fallback | cpu | - | - | SKIP needs CUDA |" in out
    assert "| train segresnet x 2 steps | cpu |" in out and "finite" in out

    # train: Training from the carried cache alone, then small copies of best.pt / last.pt that evaluate reads
    from Training.checkpoint import load
    from Training.evaluate import load_trained

    split = tmp_path / "split.json"
    split.write_text(f'{{"train": ["{case_id}"], "validation": ["{case_id}"]}}')
    out_dir = tmp_path / "back"
    assert gpu_check.main(["train", "--out", str(out_dir), "--network", "segresnet", "--cache-dir",
                           str(cache / "train"), "--split-file", str(split), "--run-dir", str(tmp_path / "run"),
                           "--patch-size", "32", "32", "32", "--batch-size", "1", "--steps", "2", "--validate-every",
                           "2", "--workers", "0", "--device", "cpu", "--amp", "none", "--quiet"]) == 0
    for name in ("best.pt", "last.pt"):
        state = load(out_dir / name)
        assert state["step"] == 2 and not {"optimizer", "scheduler", "rng"} & set(state)
        assert {t.dtype for t in state["model"].values() if t.is_floating_point()} == {torch.float16}
    network, config, _ = load_trained(out_dir / "best.pt")
    assert config.network == "segresnet" and next(network.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_run_side_imports_without_simpleitk():
    """GPU images may lack SimpleITK: a stand-in lets the library and Training import, and raises if called."""
    script = ("import sys, runpy; sys.modules['SimpleITK'] = None; "
              f"module = runpy.run_path({str(SPEC.origin)!r}); assert module['SIMPLEITK_STAND_IN']; "
              "import Training.segmentation, SimpleITK\n"
              "try:\n    SimpleITK.ReadImage('x')\nexcept RuntimeError as error:\n    print(error)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr
    assert "SimpleITK.ReadImage was called, but SimpleITK is not installed" in done.stdout
