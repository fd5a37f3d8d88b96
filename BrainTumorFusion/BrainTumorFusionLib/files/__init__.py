"""Files in and out: image files and DICOM series of a case, the label files, DICOM SEG, the segments' terminology,
the preview picture, and the integrity checks of what is read and written."""
