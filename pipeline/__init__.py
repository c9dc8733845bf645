"""Data pipeline: manifests, decoding, WebDataset shards, the learnable-frame store.

Nothing in this package imports a model: it moves pixels, captions and metadata.
"""
