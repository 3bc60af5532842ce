"""Embedders: the packaged models behind the ``Embedder`` protocol.

``loader.load_embedder(settings)`` picks the runtime (``auto``: ONNX Runtime
if it works, else sentence-transformers on torch) and loads the model.
``loader.embedding_available(settings)`` answers without importing anything
heavy. Importing this package loads nothing (and needs no numpy).
"""
