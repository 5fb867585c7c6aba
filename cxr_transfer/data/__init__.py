"""Files to arrays: decoding (PNG/JPEG/DICOM), the index, near-duplicates, groups, the split,
prepare, external sets and the synthetic demo."""
