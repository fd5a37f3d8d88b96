"""Real BraTS volumes written as DICOM MR series (one file per slice, MR Image Storage) into a test's tmp_path, the
way a scanner or PACS export hands them over: one study, one frame of reference, a series per sequence.

The geometry comes from the NIfTI image through SimpleITK (LPS, as DICOM): ImagePositionPatient of slice k is the
physical point of voxel (0, 0, k), ImageOrientationPatient the direction of the I and J axes, PixelSpacing (row
spacing, column spacing) = (J spacing, I spacing). The int16 voxels are stored as they are (no rescale), so the
series read back to exactly the NIfTI values.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from BrainTumorFusionLib.modalities import MODALITIES
from Testing.realdata import brats_case_dir

# Sequence names as they might come from a scanner; each matches its role by the library's name patterns.
DESCRIPTIONS = {"t1": "AX T1 SE", "t1ce": "AX T1CE SE", "t2": "AX T2 FSE", "flair": "AX FLAIR"}


@dataclass
class Study:
    """What the series of one patient's study share."""

    patient_id: str = "BTF-TEST-001"
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    next_series_number: int = 1


def case_images(case_id: str, crop: Optional[tuple[int, int, int]] = None) -> dict[str, sitk.Image]:
    """The four modalities of a shared case (optionally their first `crop` (I, J, K) voxels around the centre)."""
    folder = brats_case_dir(case_id)
    images = {role: sitk.ReadImage(str(folder / f"{case_id}_{role}.nii.gz")) for role in MODALITIES}
    if crop:
        size = images["t1"].GetSize()
        start = [(n - c) // 2 for n, c in zip(size, crop)]
        images = {role: sitk.RegionOfInterest(image, list(crop), start) for role, image in images.items()}
    return images


def write_series(image: sitk.Image, folder: Path, study: Study, description: str, modality: str = "MR",
                 protocol: str = "", shuffle_names: bool = True) -> list[Path]:
    """Write a 3D int16 image as one DICOM file per slice into folder (file names shuffled against slice order
    when asked, so readers must sort by position); returns the files in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image)
    assert array.dtype == np.int16, "the shared BraTS volumes are int16; other types would need a rescale"
    series_uid, number = generate_uid(), study.next_series_number
    study.next_series_number += 1
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    spacing = image.GetSpacing()
    order = list(range(array.shape[0]))
    if shuffle_names:
        random.Random(number).shuffle(order)
    paths = []
    for k, slice_pixels in enumerate(array):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        dataset = _mr_slice(study, series_uid, number, description, protocol, modality, k + 1, position,
                            orientation, spacing, slice_pixels)
        path = folder / f"IM{order[k]:04d}_{series_uid[-6:]}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _mr_slice(study, series_uid, series_number, description, protocol, modality, instance_number, position,
              orientation, spacing, pixels) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    # Patient and study
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Brain", study.patient_id, "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study.study_uid, "1", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240101", "120000", ""
    # Series, frame of reference, equipment
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = modality, series_uid, series_number
    ds.SeriesDescription, ds.PatientPosition, ds.BodyPartExamined = description, "HFS", "BRAIN"
    if protocol:
        ds.ProtocolName = protocol
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study.frame_of_reference_uid, ""
    ds.Manufacturer = "BrainTumorFusion test data (BraTS volume)"
    # Image, plane, pixels
    ds.InstanceNumber, ds.ContentDate, ds.ContentTime = instance_number, "20240101", "120000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (along J), column spacing (along I)
    ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    # MR image module (type 1/2 attributes)
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500.0, 10.0, 1
    return ds


def write_dicom_case(folder: Path, images: dict[str, sitk.Image], descriptions=None, layout: str = "mixed",
                     study: Optional[Study] = None) -> Study:
    """Write each role's image as a series of one study into folder: `mixed` puts every file in the folder itself,
    `folders` gives each series a sub-folder named by its series number (not by role)."""
    study = study or Study()
    for role, image in images.items():
        description = (descriptions or DESCRIPTIONS)[role]
        target = folder if layout == "mixed" else folder / f"series_{study.next_series_number:02d}"
        write_series(image, target, study, description)
    return study
