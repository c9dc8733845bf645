"""WebDataset shards: the writer (plan, worker, retry), `index.json`, the reader, `inspect`."""
