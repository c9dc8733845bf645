"""Datasets: descriptors, annotation parsers, video records, video folders, `mof-cli check`."""
