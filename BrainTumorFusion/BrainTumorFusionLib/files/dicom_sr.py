"""DICOM adapter of the RANO measurements: a Structured Report (TID 1500 Measurement Report) of one exam beside its
DICOM Segmentation (dicom_io.py), made with highdicom's templates. A Comprehensive 3D SR, because the diameters are
lines in patient space (SCOORD3D).

Content, one measurement group each:
- each enhancing lesion (Measurements.lesions, numbered as there): a volumetric ROI group (TID 1411) on the SEG's
  enhancing-tumor segment with its volume, long and perpendicular axes and measurable / target / thin-rim answers;
  the segment holds every enhancing lesion, the tracking identifier "enhancing lesion N" (and its UID) says which;
- each lesion again, same tracking identifier: a plain group (TID 1501) with the two diameters and their end points
  as SCOORD3D polylines in the source series' frame of reference. highdicom refuses coordinates in ROI groups, so
  the lines cannot sit in the group above; the values repeat (the same numbers under the same tracking UID);
- the regions NCR, ED, ET as volumetric groups on their own SEG segments; TC and WT (no segment) as plain groups;
- the exam: the SPD of the target lesions.

Codes (codingScheme value meaning) - standard where DICOM has the concept:
- volume SCT 118565006 Volume; diameters SCT 103339001 Long axis and SCT 131189007 Perpendicular Axis (CID 7470:
  RANO's second diameter is the longest one perpendicular to the first, not a short axis of an ellipse);
- method NCIt C114879 RANO (CID 6147); yes / no SCT 373066001 / 373067005 (CID 230);
- finding category, types and site as the SEG's segments (segments.py): SCT 49755003 Morphologically Altered
  Structure; SCT 6574001 Necrosis, SCT 79654002 Edema, NCIt C113842 Enhancing Lesion; SCT 12738006 Brain;
- procedure LN 24590-2 Brain MRI; title DCM 126000 Imaging Measurement Report (viewers key TID 1500 on it);
- units UCUM mL, mm, mm2 (CID 7462 lists cm3 only; mL is the same quantity, and the one RANO reports);
- DICOM has no concept for the SPD, RANO measurability, a target lesion, a thin rim or BraTS' tumor core and whole
  tumor: private codes of scheme 99BTF (PS3.16: designators starting "99" are private), declared in the Coding
  Scheme Identification Sequence.
"""

from pathlib import Path
from typing import Optional, Union

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from .. import __version__
from ..case import LABEL_EDEMA, LABEL_ENHANCING, LABEL_NECROTIC
from ..measurements.lesions import Line
from ..measurements.rano import Measurements
from .dicom_io import DicomCase, coded
from .file_io import PathLike, write_atomically
from .segments import ANATOMY_CODE, CATEGORY_CODE, SEGMENTS

SR_SERIES_NUMBER = 9902  # after the segmentation (9901)
SR_SERIES_DESCRIPTION = "RANO measurements (BrainTumorFusion)"
PRIVATE_SCHEME = "99BTF"

VOLUME = Code("118565006", "SCT", "Volume")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
PERPENDICULAR_AXIS = Code("131189007", "SCT", "Perpendicular Axis")
RANO = Code("C114879", "NCIt", "RANO")
YES, NO = Code("373066001", "SCT", "Yes"), Code("373067005", "SCT", "No")
BRAIN_MRI = Code("24590-2", "LN", "Brain MRI")
SPD = Code("SPD", PRIVATE_SCHEME, "Sum of products of perpendicular diameters")
MEASURABLE = Code("MEASURABLE", PRIVATE_SCHEME, "Measurable lesion (RANO)")
TARGET = Code("TARGET", PRIVATE_SCHEME, "Target lesion (RANO)")
THIN_RIM = Code("THINRIM", PRIVATE_SCHEME, "Thin enhancing rim around a cavity")
COMPOSITE_REGIONS = {"TC": Code("TC", PRIVATE_SCHEME, "Tumor core (necrosis and enhancing tumor)"),
                     "WT": Code("WT", PRIVATE_SCHEME, "Whole tumor (all tumor regions)")}
_REGION_LABELS = {"NCR": LABEL_NECROTIC, "ED": LABEL_EDEMA, "ET": LABEL_ENHANCING}  # as regions.py counts them
SEGMENT_REGIONS = {region: next(spec for spec in SEGMENTS if spec.label == label)  # regions with a SEG segment
                   for region, label in _REGION_LABELS.items()}
ML, MM, MM2 = Code("mL", "UCUM", "milliliter"), Code("mm", "UCUM", "millimeter"), Code("mm2", "UCUM",
                                                                                      "square millimeter")
_POSITION_TOLERANCE_MM = 0.01  # positions in DICOM headers are rounded decimal strings


def make_measurement_report(measurements: Measurements, segmentation: pydicom.Dataset,
                            sources: list[pydicom.Dataset], model: str):
    """A highdicom Comprehensive3DSR of `measurements` (rano.measure on the grid of `sources`, the reference series in
    slice order) that references `segmentation` (make_segmentation of the same labels on `sources`)."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    _check_references(measurements, segmentation, sources)
    numbers = {item.SegmentedPropertyTypeCodeSequence[0].CodeValue: int(item.SegmentNumber)
               for item in segmentation.SegmentSequence}
    series_uid, frame_of_reference = str(sources[0].SeriesInstanceUID), str(sources[0].FrameOfReferenceUID)

    def common():  # fresh content items for each group: a dataset in two sequences would be one shared object
        return dict(algorithm_id=hd.sr.AlgorithmIdentification("BrainTumorFusion RANO measurements", __version__),
                    finding_category=coded(CATEGORY_CODE), finding_sites=[hd.sr.FindingSite(coded(ANATOMY_CODE))])

    def on_segment(spec, tracking, measurements_, evaluations=None, method=None):
        type_code = coded(spec.type_code)
        segment = hd.sr.ReferencedSegment(
            segmentation.SOPClassUID, segmentation.SOPInstanceUID, numbers[type_code.value],
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid))
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=segment, finding_type=type_code, method=method,
            measurements=measurements_, qualitative_evaluations=evaluations, **common())

    def plain(tracking, finding_type, measurements_, method=None):
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding_type, method=method, measurements=measurements_,
            **common())

    def tracking(identifier: str, uid: Optional[str] = None):
        return hd.sr.TrackingIdentifier(uid=uid or hd.UID(), identifier=identifier)

    enhancing = SEGMENT_REGIONS["ET"]
    groups = []
    for lesion in measurements.lesions:
        uid, name = hd.UID(), f"enhancing lesion {lesion.number}"
        answers = ((MEASURABLE, lesion.measurable), (TARGET, lesion.target), (THIN_RIM, lesion.thin_rim))
        groups.append(on_segment(
            enhancing, tracking(name, uid),
            [hd.sr.Measurement(VOLUME, lesion.volume_ml, ML),
             hd.sr.Measurement(LONG_AXIS, lesion.longest_mm, MM),
             hd.sr.Measurement(PERPENDICULAR_AXIS, lesion.perpendicular_mm, MM)],
            [hd.sr.QualitativeEvaluation(question, YES if answer else NO) for question, answer in answers], RANO))
        groups.append(plain(tracking(name, uid), coded(enhancing.type_code), [
            _diameter(hd, LONG_AXIS, lesion.longest_mm, lesion.longest_line, frame_of_reference),
            _diameter(hd, PERPENDICULAR_AXIS, lesion.perpendicular_mm, lesion.perpendicular_line,
                      frame_of_reference)], RANO))
    for region, spec in SEGMENT_REGIONS.items():
        groups.append(on_segment(spec, tracking(spec.name),
                                 [hd.sr.Measurement(VOLUME, measurements.volumes_ml[region], ML)]))
    for region, code in COMPOSITE_REGIONS.items():
        groups.append(plain(tracking(code.meaning), code, [hd.sr.Measurement(VOLUME, measurements.volumes_ml[region],
                                                                             ML)]))
    groups.append(plain(tracking("target lesions"), coded(enhancing.type_code),
                        [hd.sr.Measurement(SPD, measurements.spd_mm2, MM2)], RANO))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["BrainTumorFusion", model or ""]),  # the same for one model
        name="BrainTumorFusion", manufacturer_name="BrainTumorFusion", model_name=model or "BrainTumorFusion")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=BRAIN_MRI,
                                     imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[segmentation, *sources], content=report[0], series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="BrainTumorFusion", manufacturer_model_name=model or "BrainTumorFusion",
        software_versions=__version__, series_description=SR_SERIES_DESCRIPTION,
        is_complete=True, is_final=False, is_verified=False,  # automatic measurements: preliminary until read
        coding_schemes=[CodingSchemeIdentificationItem(
            PRIVATE_SCHEME, name="BrainTumorFusion RANO concepts", responsible_organization="BrainTumorFusion")])


def _diameter(hd, name: Code, length_mm: float, line: Line, frame_of_reference: str):
    """A diameter with its end points: the library's points are RAS, DICOM's patient coordinates LPS."""
    points = np.array(line, dtype=float) * [-1.0, -1.0, 1.0]
    return hd.sr.Measurement(name, length_mm, MM, referenced_coordinates=[hd.sr.CoordinatesForMeasurement3D(
        hd.sr.GraphicTypeValues3D.POLYLINE, points, frame_of_reference)])


def _check_references(measurements: Measurements, segmentation: pydicom.Dataset,
                      sources: list[pydicom.Dataset]) -> None:
    """The segmentation must be on the source series and the measurements on its grid, or the report's references
    and lines would point at the wrong voxels."""
    series = {str(item.SeriesInstanceUID) for item in segmentation.get("ReferencedSeriesSequence", [])}
    if series != {str(sources[0].SeriesInstanceUID)}:
        raise ValueError(f"the segmentation references the series {sorted(series)}, not the source series "
                         f"{sources[0].SeriesInstanceUID}")
    grid = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if measurements.components is not None and measurements.components.shape != grid:
        raise ValueError(f"the measurements' grid {measurements.components.shape} is not the source series' {grid}")
    if measurements.ijk_to_ras is not None:
        origin = measurements.ijk_to_ras[:3, 3] * [-1.0, -1.0, 1.0]
        if not np.allclose(origin, [float(v) for v in sources[0].ImagePositionPatient], atol=_POSITION_TOLERANCE_MM):
            raise ValueError("the measurements' grid does not start at the first source image")


def write_measurement_report(measurements: Measurements, segmentation: Union[PathLike, pydicom.Dataset],
                             case: DicomCase, path: PathLike, model: str) -> None:
    """Write the SR of `measurements` for a dicom_io.DicomCase that has been read, referencing its segmentation (a
    file written by write_segmentation, or the dataset); the file is read back before it takes its final name."""
    if case.reference_role is None:
        raise ValueError("read the case (DicomCase.read) before writing its measurement report")
    if not isinstance(segmentation, pydicom.Dataset):
        segmentation = pydicom.dcmread(Path(segmentation), stop_before_pixels=True)
    report = make_measurement_report(measurements, segmentation, case.series()[case.reference_role].headers, model)
    write_atomically(lambda target: report.save_as(target), path, lambda temporary: _problem(temporary, report))


def _problem(path: Path, written) -> Optional[str]:
    """What is wrong with a written SR: it must read back with highdicom, with every measurement group."""
    import highdicom as hd

    try:
        groups = _group_count(hd.sr.srread(path))
    except Exception as error:  # a cut file fails in pydicom or highdicom with many kinds of error
        return f"it cannot be read back as a DICOM SR ({type(error).__name__}: {error})"
    if groups != _group_count(type(written).from_dataset(written)):  # a built SR has no template view: as read
        return "the measurement groups read back differ from those written"
    return None


def _group_count(report) -> int:
    return (len(report.content.get_volumetric_roi_measurement_groups())
            + len(report.content.get_image_measurement_groups()))
