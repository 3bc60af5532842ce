"""The assistant: a turn of conversation grounded in memory, as a stream of events.

``Assistant.ask`` yields typed events, so every shell (CLI REPL, SSE, the
OpenAI-compatible endpoint) renders the same stream its own way::

    Sources(items)      what retrieval found (before generation starts)
    Delta(text)         a piece of the answer
    Learned(block)      "remember that ..." stored a fact
    Answer(...)         the final text, its citations, the conversation id

``Assistant.chat_completion`` answers an OpenAI-style list of messages the
same way (memory retrieved for the last user message), without storing a
conversation.

Blocking: retrieval, embedding and generation all block; async callers run
the iterator on a thread (see ``kiana.api``).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field

from kiana.assistant.intents import remember_intent
from kiana.assistant.prompt import (
    build_chat_messages,
    build_messages,
    cited_numbers,
    supporting_numbers,
)
from kiana.assistant.retrieval import Retrieved, Retriever, relevant
from kiana.blocks import Block
from kiana.errors import InputError
from kiana.llm.base import (
    ChatMessage,
    ChatModel,
    ChatStream,
    FinishReason,
    GenerationOptions,
    Usage,
)
from kiana.node import Node, Provenance
from kiana.store import BlockFilter
from kiana.store.conversations import ConversationStore, Turn

MAX_QUESTION_CHARS = 8000
HISTORY_TURNS = 6


@dataclass(frozen=True, slots=True)
class Citation:
    n: int
    block: Block
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class Sources:
    items: list[Retrieved]


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Learned:
    block: Block
    created: bool


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    citations: list[Citation] = field(default_factory=list)
    conversation_id: str | None = None
    cancelled: bool = False
    finish_reason: FinishReason | None = None  # when the backend says (ChatStream)
    usage: Usage | None = None


Event = Sources | Delta | Learned | Answer


@dataclass
class Assistant:
    node: Node
    retriever: Retriever
    model: ChatModel
    top_k: int = 5
    context_tokens: int = 1024
    min_similarity: float = 0.25  # below this best match, memory has nothing relevant
    options: GenerationOptions = field(default_factory=GenerationOptions)

    @property
    def conversations(self) -> ConversationStore:
        return ConversationStore(self.node.store.db)

    def retrieve(self, question: str, flt: BlockFilter | None = None) -> list[Retrieved]:
        found = self.retriever.retrieve(
            question, k=self.top_k, flt=flt, token_budget=self.context_tokens
        )
        if self.retriever.vector is None:  # keyword-only setups have no similarity to gate on
            return found
        return relevant(found, self.min_similarity)

    def ask(
        self,
        question: str,
        *,
        conversation_id: str | None = None,
        history: Sequence[ChatMessage] = (),
        flt: BlockFilter | None = None,
        use_memory: bool = True,
        learn: bool = True,
        cancel: threading.Event | None = None,
        store: bool = True,
        options: GenerationOptions | None = None,
    ) -> Iterator[Event]:
        """One turn; ``options`` overrides ``self.options`` for this turn only."""
        question = question.strip()
        if not question:
            raise InputError("the question is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise InputError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
        conversations = self.conversations
        if conversation_id is not None:
            past = conversations.get(conversation_id, last=HISTORY_TURNS)
            history = [
                ChatMessage("user" if t.role == "user" else "assistant", t.content)
                for t in past.turns
            ]

        def keep(turns: list[Turn]) -> str | None:
            # A new conversation is created only once there is a turn to keep, so a
            # failed generation leaves no empty conversation behind.
            conv_id = conversation_id
            if conv_id is None and store:
                conv_id = conversations.create(question[:80])
            if conv_id is not None:
                conversations.append(conv_id, turns)
            return conv_id

        fact = remember_intent(question) if learn else None
        if fact is not None:
            result = self.node.remember(fact)
            yield Learned(result.block, result.created)
            text = (
                f"I'll remember that: {result.block.body}"
                if result.created
                else (f"I already knew that: {result.block.body}")
            )
            yield Delta(text)
            conv_id = keep([Turn("user", question), Turn("assistant", text, [result.block.id])])
            yield Answer(text, [], conv_id, finish_reason="stop")
            return

        retrieved = self.retrieve(question, flt) if use_memory else []
        yield Sources(retrieved)
        messages = build_messages(question, retrieved, history)
        answer = yield from self._generate(messages, retrieved, options, cancel)
        conv_id = keep(
            [
                Turn("user", question),
                Turn("assistant", answer.text, [c.block.id for c in answer.citations]),
            ]
        )
        yield Answer(
            answer.text,
            answer.citations,
            conv_id,
            answer.cancelled,
            answer.finish_reason,
            answer.usage,
        )

    def chat_completion(
        self,
        messages: Sequence[ChatMessage],
        *,
        use_memory: bool = True,
        flt: BlockFilter | None = None,
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Answer a client-kept conversation (OpenAI style): Sources, Delta..., Answer.

        With memory, retrieval runs for the last user message and the prompt is
        KI_ana's (see ``build_chat_messages``); without it the messages go to the
        model as they are. Nothing is stored and "remember that" is not acted on.
        """
        if not any(m.role == "user" for m in messages):
            raise InputError("the messages contain no user message")
        retrieved: list[Retrieved] = []
        prompt = list(messages)
        if use_memory:
            question = next(m.content for m in reversed(messages) if m.role == "user").strip()
            if question:
                retrieved = self.retrieve(question[:MAX_QUESTION_CHARS], flt)
            prompt = build_chat_messages(messages, retrieved)
        yield Sources(retrieved)
        answer = yield from self._generate(prompt, retrieved, options, cancel)
        yield answer

    def _generate(
        self,
        messages: list[ChatMessage],
        retrieved: list[Retrieved],
        options: GenerationOptions | None,
        cancel: threading.Event | None,
    ) -> Generator[Delta, None, Answer]:
        """Stream the model's answer as Deltas; return it (without conversation) with citations."""
        stream = self.model.stream(messages, options or self.options, cancel)
        pieces: list[str] = []
        try:
            for piece in stream:
                pieces.append(piece)
                yield Delta(piece)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # releases the model at once if this generator is abandoned
        text = "".join(pieces).strip()
        cancelled = cancel is not None and cancel.is_set()
        finish: FinishReason | None = "cancelled" if cancelled else None
        usage = None
        if isinstance(stream, ChatStream):
            finish, usage = stream.finish_reason or finish, stream.usage
        numbers = cited_numbers(text, len(retrieved))
        if not numbers and retrieved:  # small models often omit the brackets
            numbers = supporting_numbers(text, [r.block.body for r in retrieved])[:3]
        citations = [
            Citation(n, retrieved[n - 1].block, self.node.provenance(retrieved[n - 1].block.id))
            for n in numbers
        ]
        return Answer(text, citations, None, cancelled, finish, usage)
