"""llama.cpp in-process: the default chat backend.

One ``llama_cpp.Llama`` per ``EmbeddedChatModel``, created on first use (the
registry model is verified or assembled then) and kept. Generations on it are
serialised by a lock. The chat template is the one in the GGUF file; the same
formatter renders the prompt for counting tokens (a prompt that does not fit
``chat_context`` is refused before any work) and for generating.

KV-cache reuse: llama.cpp keeps the evaluated tokens of the previous prompt
and ``Llama.generate`` re-evaluates only what follows the longest common
prefix. A RAG prompt starts with the same system prompt every turn, so only
the retrieved context and the question are evaluated again. Nothing here
resets the model between calls (that would defeat it); ``usage.extra
["cached_prompt_tokens"]`` says how many prompt tokens were reused.

Cancellation and timeouts: ``cancel`` is checked between tokens. Prompt
evaluation (seconds for a long RAG prompt on 2 cores) is covered by llama.cpp's
abort callback, which stops ``llama_decode`` between compute steps when
``cancel`` is set or no progress was made for ``timeout`` seconds. The
callback is armed only until the first token: llama.cpp calls it once per
graph node (~600 times per generated token), and a Python callback there would
cost ~2 % of decode speed. A cancelled stream ends normally with
``finish_reason == "cancelled"``; a missed deadline raises
``BackendTimeoutError``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiana.errors import (
    BackendTimeoutError,
    ContextOverflowError,
    LLMError,
    ModelCorruptError,
    ModelUnavailableError,
)
from kiana.llm.base import (
    DEFAULT_OPTIONS,
    ChatMessage,
    ChatStream,
    FinishReason,
    GenerationOptions,
    ModelInfo,
)
from kiana.llm.registry import Progress, ResolvedModel, resolve_model

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Abort:
    """What the abort callback looks at; set for each generation under the lock."""

    cancel: threading.Event | None = None
    deadline: float = float("inf")
    timed_out: bool = False

    def __call__(self, _data: object) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            return True
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return False


class EmbeddedChatModel:
    """A ``ChatModel`` running a GGUF model with llama.cpp in this process."""

    backend = "embedded"

    def __init__(
        self,
        model: str,
        cache_dir: Path,
        *,
        threads: int = 0,
        context: int = 4096,
        timeout: float = 120.0,
        batch: int = 512,
        flash_attn: bool = False,
    ) -> None:
        self._model = model  # registry name or path to a GGUF file
        self._cache_dir = cache_dir
        self._threads = threads or os.cpu_count() or 1
        self._context = context
        self._timeout = float(timeout)
        self._batch = batch
        self._flash_attn = flash_attn
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()  # one generation at a time (a Lock: any thread may release)
        self._llm: Any = None
        self._resolved: ResolvedModel | None = None
        self._formatter: Any = None
        self._abort = _Abort()
        self._abort_fn: Any = None  # the ctypes callback; must live as long as the context
        self._no_abort: Any = None  # a NULL callback, to disarm
        self._set_abort: Any = None  # llama_cpp.llama_set_abort_callback

    @property
    def name(self) -> str:
        return self._resolved.name if self._resolved else self._model

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loads it); for benchmarks and tests."""
        return self.load()

    def load(self, progress: Progress | None = None) -> Any:
        """Resolve (verify / assemble) and load the model now, once."""
        with self._load_lock:
            if self._llm is None:
                self._llm = self._open(progress)
            return self._llm

    def _open(self, progress: Progress | None) -> Any:
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise ModelUnavailableError(
                "the embedded chat backend needs llama-cpp-python: pip install 'kiana[llm]'"
            ) from exc
        resolved = resolve_model(self._model, self._cache_dir, progress)
        try:
            llm = llama_cpp.Llama(
                model_path=str(resolved.path),
                n_ctx=self._context,
                n_batch=self._batch,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                flash_attn=self._flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelCorruptError(f"llama.cpp cannot load {resolved.path}: {exc}") from exc
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            # The same formatter llama-cpp-python builds from the GGUF, kept so the
            # prompt we count is exactly the prompt it generates from.
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llm, eos),
                bos_token=_token_text(llm, bos),
                stop_token_ids=[eos],
            )
            llm.chat_handler = self._formatter.to_chat_handler()
        self._abort_fn = llama_cpp.ggml_abort_callback(self._abort)
        self._no_abort = llama_cpp.ggml_abort_callback()
        self._set_abort = llama_cpp.llama_set_abort_callback
        self._resolved = resolved
        return llm

    def _arm(self, llm: Any, on: bool) -> None:
        self._set_abort(llm.ctx, self._abort_fn if on else self._no_abort, None)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the prompt the chat template makes of ``messages``."""
        return len(self._prompt_tokens(self.load(), _as_dicts(messages)))

    def _prompt_tokens(self, llm: Any, messages: list[dict[str, str]]) -> list[int]:
        if self._formatter is not None:
            prompt = self._formatter(messages=messages).prompt
            return list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
        # No template in the GGUF: llama-cpp-python falls back to a generic format;
        # count the contents plus a few tokens of markup per message.
        return [
            t
            for m in messages
            for t in llm.tokenize(m["content"].encode("utf-8"), add_bos=False) + [0] * 8
        ]

    def stream(
        self,
        messages: Sequence[ChatMessage],
        options: GenerationOptions = DEFAULT_OPTIONS,
        cancel: threading.Event | None = None,
    ) -> ChatStream:
        msgs = _as_dicts(messages)
        return ChatStream(lambda out: self._generate(msgs, options, cancel, out))

    def _generate(
        self,
        messages: list[dict[str, str]],
        options: GenerationOptions,
        cancel: threading.Event | None,
        out: ChatStream,
    ) -> Iterator[str]:
        started = time.monotonic()
        llm = self.load()
        if not self._lock.acquire(timeout=self._timeout):
            raise BackendTimeoutError(
                f"the embedded model was busy with another answer for {self._timeout:g} s"
            )
        try:
            if self._llm is not llm:
                raise LLMError("the embedded model was closed while this answer waited for it")
            yield from self._locked_generate(llm, messages, options, cancel, out, started)
        finally:
            self._abort.cancel, self._abort.deadline = None, float("inf")
            self._lock.release()

    def _locked_generate(
        self,
        llm: Any,
        messages: list[dict[str, str]],
        options: GenerationOptions,
        cancel: threading.Event | None,
        out: ChatStream,
        started: float,
    ) -> Iterator[str]:
        if cancel is not None and cancel.is_set():
            out.finish_reason = "cancelled"
            return
        tokens = self._prompt_tokens(llm, messages)
        n_ctx = int(llm.n_ctx())
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens but the model's context window is"
                f" {n_ctx} (chat.context); shorten the conversation or the retrieved context"
            )
        previous = llm.input_ids[: llm.n_tokens].tolist()
        cached = _common_prefix(previous, tokens)
        out.usage.prompt_tokens = len(tokens)
        out.usage.extra["cached_prompt_tokens"] = float(cached)
        self._abort.cancel, self._abort.timed_out = cancel, False
        self._abort.deadline = time.monotonic() + self._timeout
        self._arm(llm, True)
        armed = True
        chunks = llm.create_chat_completion(
            messages=messages,
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            stop=list(options.stop),
            seed=options.seed,
        )
        pieces: list[str] = []
        first: float | None = None
        reason: FinishReason | None = None
        try:
            for chunk in chunks:
                if armed:  # the prompt is evaluated: from here on, check between tokens
                    self._arm(llm, False)
                    armed = False
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    if first is None:
                        first = time.monotonic()
                    pieces.append(text)
                    yield text
                if choice.get("finish_reason") in ("stop", "length"):
                    reason = choice["finish_reason"]
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
        except (RuntimeError, ValueError) as exc:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"  # the abort callback stopped llama_decode
            elif self._abort.timed_out:
                raise BackendTimeoutError(
                    f"the embedded model made no progress for {self._timeout:g} s"
                ) from exc
            elif "exceed context window" in str(exc):
                raise ContextOverflowError(f"the prompt does not fit: {exc}") from exc
            else:
                raise LLMError(f"llama.cpp failed: {exc}") from exc
        finally:
            chunks.close()
            if armed:
                self._arm(llm, False)
        ended = time.monotonic()
        out.finish_reason = reason or "stop"
        text = "".join(pieces)
        n_out = len(llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        out.usage.completion_tokens = n_out
        if first is not None:
            out.usage.extra["first_token_s"] = first - started
            if n_out > 1 and ended > first:
                out.usage.extra["tokens_per_s"] = (n_out - 1) / (ended - first)
        out.usage.extra["total_s"] = ended - started

    def info(self) -> ModelInfo:
        """Describe the configured model without loading it."""
        from kiana.llm.factory import describe_embedded  # avoids an import cycle

        return describe_embedded(self._model, self._cache_dir, self._context, selected=True)

    def close(self) -> None:
        with self._load_lock:
            llm, self._llm = self._llm, None
            if llm is None:
                return
            # Wait for a running generation; if it never ends (a stream abandoned
            # without close()), leave freeing the model to the garbage collector
            # rather than pull it from under that generation.
            if not self._lock.acquire(timeout=self._timeout):
                log.warning("chat model still busy after %g s; not closing it now", self._timeout)
                return
            try:
                llm.close()
            finally:
                self._lock.release()


def _as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    for m in messages:
        if m.role not in ("system", "user", "assistant"):
            raise LLMError(f"unknown chat role {m.role!r}")
    return [{"role": m.role, "content": m.content} for m in messages]


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(llm.detokenize([token], special=True)).decode("utf-8", errors="replace")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
