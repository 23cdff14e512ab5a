"""Qt-free core of mamview: DICOM, cache, models, analytics. Never imports Qt."""
