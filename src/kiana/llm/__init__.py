"""Chat model backends: embedded llama.cpp, Ollama's native API, OpenAI-compatible servers."""
