"""DICOM reading: header scan, view/laterality classification, pixel decode, display pipeline."""

from pydicom import config as _pydicom_config

# We validate what matters ourselves (UIDs, sizes, classification) and record a Problem; pydicom's
# per-value warnings would only print one stderr line per odd value of someone else's file.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
