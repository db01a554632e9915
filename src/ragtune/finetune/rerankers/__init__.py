"""Reranker training: hard-negative mining and cross-encoder fine-tuning into the artefact store."""
