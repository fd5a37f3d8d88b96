"""The DICOM SR of an exam's RANO measurements (files/dicom_sr.py) on a real shared case written as DICOM MR series:
its ground truth, cropped as the series are, gives the DICOM Segmentation and the measurements; the report read back
with highdicom holds every lesion's volume, diameters and answers, the lines where the lesion is, the SPD and the
region volumes, references the SEG's segments and the source series, and passes dciodvfy where it is installed. An
exam without enhancing tumor still gives a valid report, with no lesion and an SPD of 0."""

import itertools
import math

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.case import LABEL_ENHANCING, LABEL_NECROTIC
from BrainTumorFusionLib.files import dicom_sr
from BrainTumorFusionLib.files.dicom_io import DicomCase, make_segmentation
from BrainTumorFusionLib.measurements import rano
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of
from Testing.dicom_cases import case_images, write_dicom_case
from Testing.e2e.test_dicom_batch import dciodvfy_errors
from Testing.realdata import brats_case_dir

CASE = "Brats18_CBICA_ASY_1"
CROP = (120, 120, 64)  # (I, J, K) around the volume's centre: six enhancing lesions, two of them measurable
MODEL = "test model"


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    """(DicomCase, read; its ground-truth labels on the reference grid; the reference image)."""
    folder = tmp_path_factory.mktemp("dicom_sr") / CASE
    write_dicom_case(folder, case_images(CASE, crop=CROP))
    case = DicomCase(CASE, folder)
    _, reference = case.read()
    truth = sitk.ReadImage(str(brats_case_dir(CASE) / f"{CASE}_seg.nii.gz"))
    start = [(n - c) // 2 for n, c in zip(truth.GetSize(), CROP)]  # as case_images crops
    truth = sitk.RegionOfInterest(truth, list(CROP), start)
    np.testing.assert_allclose(truth.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    return case, sitk.GetArrayFromImage(truth), reference


def write_report(exam, labels, folder):
    """(measurements, source headers, SEG header, SR read back, SR path) of `labels` through the library."""
    case, _, reference = exam
    measurements = rano.measure(labels, ijk_to_ras_of(reference))
    sources = case.series()[case.reference_role].headers
    make_segmentation(labels, sources, MODEL).save_as(folder / "seg.dcm")
    dicom_sr.write_measurement_report(measurements, folder / "seg.dcm", case, folder / "sr.dcm", MODEL)
    segmentation = pydicom.dcmread(folder / "seg.dcm", stop_before_pixels=True)
    return measurements, sources, segmentation, highdicom.sr.srread(folder / "sr.dcm"), folder / "sr.dcm"


def by_name(groups):
    return {group.tracking_identifier: group for group in groups}


def value(group, name):
    (measurement,) = group.get_measurements(name=name)
    return measurement.value


def answer(group, name):
    (evaluation,) = group.get_qualitative_evaluations(name=name)
    return evaluation.value


def check_common(measurements, sources, segmentation, report, path):
    """Region volumes on the SEG's segments (same codes), the SPD, the evidence and dciodvfy: any exam."""
    segment_of = {item.SegmentedPropertyTypeCodeSequence[0].CodeValue: item.SegmentNumber
                  for item in segmentation.SegmentSequence}
    volumetric = by_name(report.content.get_volumetric_roi_measurement_groups())
    plain = by_name(report.content.get_image_measurement_groups())
    for region, spec in dicom_sr.SEGMENT_REGIONS.items():
        group = volumetric[spec.name]
        assert value(group, dicom_sr.VOLUME) == pytest.approx(measurements.volumes_ml[region], abs=1e-6)
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == segmentation.SOPInstanceUID
        assert segment.referenced_segment_numbers == [segment_of[group.finding_type.value]]
        assert segment.source_series_for_segmentation.value == sources[0].SeriesInstanceUID
    for region, code in dicom_sr.COMPOSITE_REGIONS.items():
        assert value(plain[code.meaning], dicom_sr.VOLUME) == pytest.approx(measurements.volumes_ml[region], abs=1e-6)
    assert value(plain["target lesions"], dicom_sr.SPD) == pytest.approx(measurements.spd_mm2, abs=1e-6)
    # Evidence: the SEG and every instance of the source (reference) series, nothing else.
    assert {(series, instance) for _, series, instance, _ in report.get_evidence()} == (
        {(segmentation.SeriesInstanceUID, segmentation.SOPInstanceUID)}
        | {(source.SeriesInstanceUID, source.SOPInstanceUID) for source in sources})
    assert report.StudyInstanceUID == sources[0].StudyInstanceUID
    assert report.PatientID == sources[0].PatientID

    output, errors = dciodvfy_errors(path)
    if output is not None:
        print(f"dciodvfy {path.name}:\n{output}")
        assert errors == [], output


@pytest.mark.slow
def test_report_holds_each_lesion_with_its_lines_the_spd_and_the_regions(exam, tmp_path):
    _, labels, reference = exam
    measurements, sources, segmentation, report, path = write_report(exam, labels, tmp_path)
    assert len(measurements.lesions) == 6 and len(measurements.targets) == 2  # the case still shows what it should

    volumetric = by_name(report.content.get_volumetric_roi_measurement_groups())
    plain = by_name(report.content.get_image_measurement_groups())
    enhancing = next(item.SegmentNumber for item in segmentation.SegmentSequence
                     if item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "C113842")
    for lesion in measurements.lesions:
        name = f"enhancing lesion {lesion.number}"
        group, lines = volumetric[name], plain[name]
        assert group.tracking_uid == lines.tracking_uid
        assert value(group, dicom_sr.VOLUME) == pytest.approx(lesion.volume_ml, abs=1e-6)
        assert value(group, dicom_sr.LONG_AXIS) == pytest.approx(lesion.longest_mm, abs=1e-6)
        assert value(group, dicom_sr.PERPENDICULAR_AXIS) == pytest.approx(lesion.perpendicular_mm, abs=1e-6)
        for question, expected in ((dicom_sr.MEASURABLE, lesion.measurable), (dicom_sr.TARGET, lesion.target),
                                   (dicom_sr.THIN_RIM, lesion.thin_rim)):
            assert answer(group, question) == (dicom_sr.YES if expected else dicom_sr.NO), (name, question)
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == segmentation.SOPInstanceUID
        assert segment.referenced_segment_numbers == [enhancing]
        assert segment.source_series_for_segmentation.value == sources[0].SeriesInstanceUID
        assert group.method == dicom_sr.RANO
        # The lines: LPS points in the series' frame of reference, as long as the diameters, at this lesion.
        for code, length, line in ((dicom_sr.LONG_AXIS, lesion.longest_mm, lesion.longest_line),
                                   (dicom_sr.PERPENDICULAR_AXIS, lesion.perpendicular_mm, lesion.perpendicular_line)):
            (measurement,) = lines.get_measurements(name=code)
            assert measurement.value == pytest.approx(length, abs=1e-6)
            (coordinates,) = measurement.referenced_coordinates
            assert coordinates.frame_of_reference_uid == sources[0].FrameOfReferenceUID
            points = coordinates.value
            np.testing.assert_allclose(points, np.array(line) * [-1, -1, 1], atol=1e-3)
            assert np.linalg.norm(points[1] - points[0]) == pytest.approx(length, abs=0.01)
            for point in points:
                assert touches(measurements.components, reference, point, lesion.number), (name, code, point)
    assert len(volumetric) == len(measurements.lesions) + 3 and len(plain) == len(measurements.lesions) + 3
    products = [value(volumetric[f"enhancing lesion {lesion.number}"], dicom_sr.LONG_AXIS)
                * value(volumetric[f"enhancing lesion {lesion.number}"], dicom_sr.PERPENDICULAR_AXIS)
                for lesion in measurements.targets]
    assert value(plain["target lesions"], dicom_sr.SPD) == pytest.approx(sum(products), abs=0.1)
    check_common(measurements, sources, segmentation, report, path)


def touches(components, reference, point, number):
    """Whether an LPS point lies on the edge of lesion `number`: a voxel of it within one voxel on each axis (a
    perpendicular diameter ends where the interpolated mask crosses 0.5; SimpleITK places points in LPS, as DICOM)."""
    index = reference.TransformPhysicalPointToContinuousIndex([float(c) for c in point])  # (i, j, k)
    near = [range(math.ceil(x - 1.001), math.floor(x + 1.001) + 1) for x in index]
    return any(0 <= k < components.shape[0] and 0 <= j < components.shape[1] and 0 <= i < components.shape[2]
               and components[k, j, i] == number for i, j, k in itertools.product(*near))


@pytest.mark.slow
def test_exam_without_enhancing_tumor_gives_a_report_without_lesions(exam, tmp_path):
    labels = exam[1].copy()
    labels[labels == LABEL_ENHANCING] = LABEL_NECROTIC
    measurements, sources, segmentation, report, path = write_report(exam, labels, tmp_path)
    assert measurements.lesions == () and measurements.volumes_ml["ET"] == 0

    volumetric = report.content.get_volumetric_roi_measurement_groups()
    plain = report.content.get_image_measurement_groups()
    assert sorted(group.tracking_identifier for group in volumetric + plain) == sorted(
        [spec.name for spec in dicom_sr.SEGMENT_REGIONS.values()]
        + [code.meaning for code in dicom_sr.COMPOSITE_REGIONS.values()] + ["target lesions"])
    assert value(by_name(plain)["target lesions"], dicom_sr.SPD) == 0
    check_common(measurements, sources, segmentation, report, path)


@pytest.mark.slow
def test_report_refuses_measurements_off_the_source_grid(exam):
    case, labels, reference = exam
    sources = case.series()[case.reference_role].headers
    segmentation = make_segmentation(labels, sources, MODEL)
    shifted = ijk_to_ras_of(reference)
    shifted[:3, 3] += [0.0, 0.0, 1.0]  # one slice up
    for measurements in (rano.measure(labels[1:], ijk_to_ras_of(reference)), rano.measure(labels, shifted)):
        with pytest.raises(ValueError, match="grid"):
            dicom_sr.make_measurement_report(measurements, segmentation, sources, MODEL)
