"""`mof-cli eval`: encode a test split at U uniform frames, rank, write `metrics.json`."""
