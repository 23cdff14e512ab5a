"""What leaves the app about a woman: the export figure's content, DICOM SR, CSV rows."""
