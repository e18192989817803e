"""Inference objects: ``predict_chunk(obs) -> ActionChunk``."""
