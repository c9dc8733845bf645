"""The Zarr MOF store: its format, the `FrameStore` handle, asynchronous prefetch and write-back."""
