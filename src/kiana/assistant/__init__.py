"""The assistant: retrieval over memory, RAG prompts with citations, conversations."""
