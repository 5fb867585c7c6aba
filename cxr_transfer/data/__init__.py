"""Files to arrays: decoding (PNG/JPEG/DICOM), the index, near-duplicates, groups, the split, prepare and the synthetic demo."""
