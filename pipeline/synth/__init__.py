"""The embedded synthetic dataset: grammar, captions, rendering, statistics, the generator."""
