"""Writing outputs: nothing incomplete under a final name (full disk, truncated writes), stale temporaries, case
folders that cannot be used kept to themselves."""

import gzip
import os
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.errors import InputError, OutputError
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.file_io import remove_stale_temporaries, write_atomically, write_labels
from Testing.realdata import brats_case_dir

CASE = "Brats18_2013_11_1"
IJK_TO_RAS = np.array([[-1.0, 0, 0, 10], [0, -0.9, 0.1, 239], [0, 0.05, 1.2, -5], [0, 0, 0, 1]])  # oblique


def real_labels():
    image = sitk.ReadImage(str(brats_case_dir(CASE) / f"{CASE}_seg.nii.gz"))
    return sitk.GetArrayFromImage(image), image


@pytest.fixture
def small_disk(tmp_path):
    """A 24 KiB tmpfs: the compressed labels of a BraTS case (42 KB) do not fit."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); "
                    "test_a_truncated_write_is_refused covers the same check")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_while_writing_labels_leaves_nothing(small_disk):
    labels, reference = real_labels()
    with pytest.raises(OutputError, match=r"x_seg\.nii\.gz did not complete.*disk may be full"):
        write_labels(labels, reference, small_disk / "x_seg.nii.gz")
    assert os.listdir(small_disk) == []


def test_a_truncated_write_is_refused(tmp_path):
    """A writer that returns normally after writing half a file, as SimpleITK's NIfTI writer does on a full disk."""
    labels, reference = real_labels()
    sitk.WriteImage(reference, str(tmp_path / "whole.nii.gz"), True)
    data = (tmp_path / "whole.nii.gz").read_bytes()
    for name, cut in (("x_seg.nii.gz", data[: len(data) // 3]), ("y_seg.nii.gz", data[:-4])):  # -4: gzip trailer
        with pytest.raises(OutputError, match=f"{name} did not complete: its compressed data is cut short"):
            write_atomically(lambda target, cut=cut: target.write_bytes(cut), tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ["whole.nii.gz"]


def test_a_seg_nrrd_without_its_gzip_end_is_refused(tmp_path):
    """ITK's NRRD reader counts the data bytes but does not check the gzip trailer: a file cut by 4 bytes reads."""
    image = sitk.GetImageFromArray(real_labels()[0])
    sitk.WriteImage(image, str(tmp_path / "whole.seg.nrrd"), True)
    data = (tmp_path / "whole.seg.nrrd").read_bytes()
    with pytest.raises(OutputError, match="cut short"):
        write_atomically(lambda target: target.write_bytes(data[:-4]), tmp_path / "x.seg.nrrd")
    assert sorted(os.listdir(tmp_path)) == ["whole.seg.nrrd"]


def test_labels_written_and_read_back_unchanged(tmp_path):
    labels, reference = real_labels()
    write_labels(labels, reference, tmp_path / "x_seg.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "x_seg.nii.gz"))), labels)
    with gzip.open(tmp_path / "x_seg.nii.gz") as stream:
        assert len(stream.read()) == 352 + labels.size  # NIfTI-1 header + extension flags, then uint8 voxels
    assert os.listdir(tmp_path) == ["x_seg.nii.gz"]


def test_temporary_names_stay_short_for_long_case_names(tmp_path):
    seen = []
    long_name = "x" * 230 + "_seg.nii.gz"
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.uint8))
    write_atomically(lambda target: seen.append(target.name) or sitk.WriteImage(image, str(target), True),
                     tmp_path / long_name)
    assert len(seen[0]) < 40 and seen[0].endswith(".nii.gz") and os.listdir(tmp_path) == [long_name]


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path):
    start = time.time()
    stale = [".btf-0123456789ab.partial.nii.gz", ".partial-0123456789ab.seg.nrrd", ".btf-abcdefabcdef.partial"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half")
        os.utime(tmp_path / name, (start - 3600, start - 3600))
    kept = [".btf-fedcba987654.partial.json",  # another process is writing it now
            ".partial-notes.txt", "case.partial-0123456789ab.nii.gz", "case_seg.nii.gz"]  # not this tool's
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
        if name != kept[0]:
            os.utime(tmp_path / name, (start - 3600, start - 3600))
    removed = remove_stale_temporaries(tmp_path, older_than=start - 60)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def write_image(path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.int16)), str(path))


def test_a_case_folder_with_two_images_for_one_role_is_kept_to_itself(tmp_path):
    for case in ("A", "B"):
        (tmp_path / case).mkdir()
        write_image(tmp_path / case / f"{case}_t1.nii.gz")
    write_image(tmp_path / "B" / "B_T1.nrrd")
    problems = {}
    assert [case.case_id for case in find_cases(tmp_path, problems)] == ["A"]
    assert list(problems) == ["B"] and "two T1 images: B_T1.nrrd and B_t1.nii.gz" in str(problems["B"])
    with pytest.raises(InputError, match="two T1 images"):  # callers that give no `problems` still stop
        find_cases(tmp_path)


def test_an_empty_file_is_refused_only_where_its_format_cannot_be_empty(tmp_path):
    write_atomically(lambda target: target.write_text(""), tmp_path / "metrics.jsonl")  # a log with no line yet
    with pytest.raises(OutputError, match="record.json did not complete: it is empty"):
        write_atomically(lambda target: target.write_text(""), tmp_path / "record.json")
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_seg_nrrd_is_written_without_slicer_on_the_labels_grid(tmp_path):
    """The batch's .seg.nrrd writer runs where slicer cannot be imported; the file holds the labels on their grid
    (LPS in the file), one segment per BraTS label with its terminology. Slicer reading it back: Testing/slicer."""
    import sys

    import slicerio
    from slicerio.segmentation import terminology_entry_to_string

    from BrainTumorFusionLib.files.segments import SEGMENTS

    labels, _ = real_labels()
    np.save(tmp_path / "labels.npy", labels.astype(np.uint8))
    script = ("import sys; sys.modules['slicer'] = None\n"
              "import numpy as np\n"
              "from BrainTumorFusionLib.case import Result\n"
              "from BrainTumorFusionLib.files.seg_nrrd import save_seg_nrrd\n"
              f"matrix = np.array({IJK_TO_RAS.tolist()})\n"
              f"labels = np.load({str(tmp_path / 'labels.npy')!r})\n"
              "save_seg_nrrd(Result(case_name='x', labels=labels, ijk_to_ras=matrix, volumes_ml={}), "
              f"{str(tmp_path / 'x.seg.nrrd')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = slicerio.read_segmentation(str(tmp_path / "x.seg.nrrd"))
    np.testing.assert_array_equal(written["voxels"].transpose(), labels)  # stored (I, J, K)
    np.testing.assert_allclose(written["ijkToLPS"], np.diag([-1.0, -1.0, 1.0, 1.0]) @ IJK_TO_RAS)
    segments = {s["id"]: s for s in written["segments"]}
    assert list(segments) == [spec.segment_id for spec in SEGMENTS]
    for spec in SEGMENTS:
        assert segments[spec.segment_id]["labelValue"] == spec.label and segments[spec.segment_id]["name"] == spec.name
        assert terminology_entry_to_string(segments[spec.segment_id]["terminology"]) == spec.terminology
