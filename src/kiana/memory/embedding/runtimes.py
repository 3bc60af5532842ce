"""The two runtimes of one model: ONNX Runtime (no torch) and sentence-transformers.

Both produce the same vectors (mean pooling over the attention mask, then L2
normalisation, input truncated at the model's token limit) and so share a
``model_id``. Constructing one loads the model; nothing here runs at import.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from kiana.errors import EmbeddingModelError
from kiana.memory.embedder import Vectors
from kiana.memory.embedding.common import DEFAULT_BATCH, embed_batched, mean_pool, normalise
from kiana.memory.embedding.onnx_export import INPUTS
from kiana.memory.embedding.registry import (
    INSTALL_HINT,
    ModelSpec,
    default_threads,
    model_dir,
    offline_hub,
    onnx_available,
    torch_available,
    verify_files,
)


class _ModelEmbedder:
    """What both runtimes share: the model's id and size, batched ``embed`` over ``_run``."""

    _spec: ModelSpec
    _batch: int

    @property
    def model_id(self) -> str:
        return self._spec.name

    @property
    def dim(self) -> int:
        return self._spec.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        return embed_batched(
            texts, self.dim, self._run, self._batch, max_tokens=self._spec.max_tokens
        )

    def _run(self, batch: list[str]) -> Vectors:
        raise NotImplementedError


class OnnxEmbedder(_ModelEmbedder):
    """The model's ONNX export run by onnxruntime, tokenised by ``tokenizers``."""

    runtime = "onnx"

    def __init__(
        self,
        spec: ModelSpec,
        model_bytes: bytes,
        *,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        if not onnx_available():
            raise EmbeddingModelError(
                f"onnxruntime and tokenizers are not installed; {INSTALL_HINT}"
            )
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self._spec = spec
        self._batch = batch_size
        folder = model_dir(spec)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.enable_truncation(max_length=spec.max_tokens)
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        self._tokenizer = tok
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No busy-waiting between ops: on a small machine shared with the chat model and the
        # API server, spinning threads cost more than they save (measured: 5.9 vs 9.8 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                model_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingModelError(f"onnxruntime cannot load {spec.name}: {exc}") from exc
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _run(self, batch: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return mean_pool(hidden, mask)


class TorchEmbedder(_ModelEmbedder):
    """sentence-transformers on CPU torch."""

    runtime = "torch"
    _lock = threading.Lock()  # torch.set_num_threads is process-wide

    def __init__(
        self, spec: ModelSpec, *, threads: int | None = None, batch_size: int = DEFAULT_BATCH
    ) -> None:
        if not torch_available():
            raise EmbeddingModelError(
                f"torch and sentence-transformers are not installed; {INSTALL_HINT}"
            )
        folder = model_dir(spec)
        verify_files(spec, folder)
        offline_hub()
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no bars on stderr

        with self._lock:
            torch.set_num_threads(threads or default_threads())
        self._spec = spec
        self._batch = batch_size
        try:
            self._model: Any = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:  # any loading failure means "unavailable"
            raise EmbeddingModelError(
                f"sentence-transformers cannot load {spec.name}: {exc}"
            ) from exc
        self._model.max_seq_length = spec.max_tokens

    def _run(self, batch: list[str]) -> Vectors:
        out = self._model.encode(
            batch,
            batch_size=len(batch),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return normalise(out)


__all__ = ["INPUTS", "OnnxEmbedder", "TorchEmbedder"]
