"""The assistant: a turn of conversation grounded in memory, as a stream of events.

``Assistant.ask`` yields typed events, so every shell (CLI REPL, SSE, the
OpenAI-compatible endpoint) renders the same stream its own way::

    Sources(items)      what retrieval found (before generation starts)
    Delta(text)         a piece of the answer
    Learned(block)      "remember that ..." stored a fact
    Answer(...)         the final text, its citations, the conversation id

Blocking: retrieval, embedding and generation all block; async callers run
the iterator on a thread (see ``kiana.api``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from kiana.assistant.intents import remember_intent
from kiana.assistant.prompt import build_messages, cited_numbers, supporting_numbers
from kiana.assistant.retrieval import Retrieved, Retriever, relevant
from kiana.blocks import Block
from kiana.errors import InputError
from kiana.llm.base import ChatMessage, ChatModel, GenerationOptions
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
    ) -> Iterator[Event]:
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
        elif store:
            conversation_id = conversations.create(question[:80])

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
            if conversation_id is not None:
                conversations.append(
                    conversation_id,
                    [Turn("user", question), Turn("assistant", text, [result.block.id])],
                )
            yield Answer(text, [], conversation_id)
            return

        retrieved = self.retrieve(question, flt) if use_memory else []
        yield Sources(retrieved)
        messages = build_messages(question, retrieved, history)
        pieces: list[str] = []
        for piece in self.model.stream(messages, self.options, cancel):
            pieces.append(piece)
            yield Delta(piece)
        text = "".join(pieces).strip()
        cancelled = cancel is not None and cancel.is_set()
        numbers = cited_numbers(text, len(retrieved))
        if not numbers and retrieved:  # small models often omit the brackets
            numbers = supporting_numbers(text, [r.block.body for r in retrieved])[:3]
        citations = [
            Citation(n, retrieved[n - 1].block, self.node.provenance(retrieved[n - 1].block.id))
            for n in numbers
        ]
        if conversation_id is not None:
            conversations.append(
                conversation_id,
                [Turn("user", question), Turn("assistant", text, [c.block.id for c in citations])],
            )
        yield Answer(text, citations, conversation_id, cancelled)
