"""Decoding R frames of a video: the backend-neutral entry (`video`), PyAV on CPU, DALI on GPU."""
