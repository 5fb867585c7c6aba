"""One metrics engine (two classes are the K = 2 case), calibration, seeds, folds and external sets."""
