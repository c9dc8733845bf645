"""`mof-cli export-frames`: a run's learned frames as pictures, grids, MP4s, attention overlays."""
