"""Building the assistant's parts from a node's settings."""

from __future__ import annotations

from kiana.assistant.engine import Assistant
from kiana.assistant.retrieval import Ranked, Retriever
from kiana.errors import InputError
from kiana.llm.base import ChatModel
from kiana.node import Node
from kiana.store import BlockFilter


def build_retriever(node: Node, *, use_vectors: bool | None = None) -> Retriever:
    """Keyword search always; vector search when the embedding stack is installed."""

    def keyword(query: str, k: int, flt: BlockFilter | None) -> Ranked:
        try:
            return [(h.block.id, h.score) for h in node.search(query, flt, limit=k)]
        except InputError:  # a query without words has no keyword ranking
            return []

    vector = None
    if use_vectors is None:
        from kiana.memory.embedding.loader import embedding_available

        use_vectors = embedding_available(node.settings)
    if use_vectors:
        vector = node.vectors.search
    return Retriever(blocks=node.store, keyword=keyword, vector=vector)


def build_assistant(node: Node, model: ChatModel | None = None) -> Assistant:
    if model is None:
        from kiana.llm.factory import open_chat_model

        model = open_chat_model(node.settings)
    settings = node.settings
    return Assistant(
        node=node,
        retriever=build_retriever(node),
        model=model,
        top_k=settings.top_k,
        context_tokens=settings.context_tokens,
    )
