"""DICOM reading: header scan, view/laterality classification, pixel decode, display pipeline."""
