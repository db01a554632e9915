"""Training data: dataset formats, validation, versions, deduplication and the rows a principal may read."""
