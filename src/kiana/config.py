"""Settings: defaults, then ``$KIANA_HOME/config.toml``, then ``KIANA_*`` environment variables.

Every setting is declared once in ``SETTINGS``; ``kiana config show`` and
``docs/configuration.md`` are derived from (and tested against) that table.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from kiana.errors import ConfigError

CONFIG_FILE = "config.toml"


@dataclass(frozen=True, slots=True)
class SettingSpec:
    name: str  # attribute on Settings
    section: str  # TOML table
    key: str  # key inside the table
    env: str
    kind: type
    default: Any
    doc: str


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "database_url", "storage", "database_url", "KIANA_DATABASE_URL", str, "",
        "Empty: SQLite file kiana.db in the home. Or postgresql://user:pass@host/db.",
    ),
    SettingSpec(
        "api_host", "api", "host", "KIANA_API_HOST", str, "127.0.0.1",
        "Address 'kiana serve' binds to. Non-loopback addresses require the API token.",
    ),
    SettingSpec("api_port", "api", "port", "KIANA_API_PORT", int, 8765, "TCP port of the HTTP API."),
    SettingSpec(
        "api_require_token", "api", "require_token", "KIANA_API_REQUIRE_TOKEN", bool, True,
        "Require the bearer token on every route except /healthz and /readyz.",
    ),
    SettingSpec(
        "max_body_bytes", "blocks", "max_body_bytes", "KIANA_MAX_BODY_BYTES", int, 1024 * 1024,
        "Largest block body accepted, in UTF-8 bytes.",
    ),
    SettingSpec(
        "chunk_chars", "ingest", "chunk_chars", "KIANA_CHUNK_CHARS", int, 1200,
        "Target size of a document chunk made by 'kiana add', in characters.",
    ),
    SettingSpec(
        "log_level", "logging", "level", "KIANA_LOG_LEVEL", str, "warning",
        "debug, info, warning or error. Logs never contain memory content.",
    ),
    SettingSpec(
        "model_cache", "models", "cache_dir", "KIANA_MODEL_CACHE", str, "",
        "Where packaged models are assembled. Empty: $XDG_CACHE_HOME/kiana or ~/.cache/kiana.",
    ),
    SettingSpec(
        "embedding_model", "embeddings", "model", "KIANA_EMBEDDING_MODEL", str, "all-minilm-l6-v2",
        "Embedding model (registry name). Changing it requires 'kiana reindex'.",
    ),
    SettingSpec(
        "embedding_runtime", "embeddings", "runtime", "KIANA_EMBEDDING_RUNTIME", str, "auto",
        "auto, onnx or torch. auto prefers ONNX Runtime (faster on CPU) and falls back to torch.",
    ),
    SettingSpec(
        "vector_backend", "vectors", "backend", "KIANA_VECTOR_BACKEND", str, "auto",
        "auto (hnsw on SQLite, pgvector on PostgreSQL), hnsw, pgvector, qdrant or chroma.",
    ),
    SettingSpec(
        "qdrant_url", "vectors", "qdrant_url", "KIANA_QDRANT_URL", str, "",
        "Qdrant server URL. Empty: Qdrant's local mode in the home (no server).",
    ),
    SettingSpec(
        "chat_backend", "chat", "backend", "KIANA_CHAT_BACKEND", str, "embedded",
        "embedded (llama.cpp in-process), ollama, or openai (any OpenAI-compatible server).",
    ),
    SettingSpec(
        "chat_model", "chat", "model", "KIANA_CHAT_MODEL", str, "qwen2.5-coder-1.5b-instruct",
        "Registry name or path to a GGUF file (embedded), or the server's model name.",
    ),
    SettingSpec(
        "chat_url", "chat", "url", "KIANA_CHAT_URL", str, "",
        "Base URL of the Ollama or OpenAI-compatible server. Empty: http://127.0.0.1:11434 (ollama), http://127.0.0.1:8080/v1 (openai).",
    ),
    SettingSpec(
        "chat_api_key", "chat", "api_key", "KIANA_CHAT_API_KEY", str, "",
        "API key sent to an OpenAI-compatible server, if it needs one. Never shown.",
    ),
    SettingSpec(
        "chat_threads", "chat", "threads", "KIANA_CHAT_THREADS", int, 0,
        "CPU threads for the embedded model. 0: all cores.",
    ),
    SettingSpec(
        "chat_context", "chat", "context", "KIANA_CHAT_CONTEXT", int, 4096,
        "Context window of the embedded model, in tokens.",
    ),
    SettingSpec(
        "chat_timeout", "chat", "timeout", "KIANA_CHAT_TIMEOUT", int, 120,
        "Seconds to wait for a chat backend before giving up.",
    ),
    SettingSpec(
        "context_tokens", "assistant", "context_tokens", "KIANA_CONTEXT_TOKENS", int, 1024,
        "Token budget for remembered blocks placed in the prompt.",
    ),
    SettingSpec(
        "top_k", "assistant", "top_k", "KIANA_TOP_K", int, 5,
        "How many memory blocks retrieval considers for an answer.",
    ),
    SettingSpec(
        "mesh_enabled", "mesh", "enabled", "KIANA_MESH_ENABLED", bool, True,
        "Run the peer-to-peer mesh (links to this mind's other devices) inside 'kiana serve'.",
    ),
    SettingSpec(
        "mesh_host", "mesh", "host", "KIANA_MESH_HOST", str, "0.0.0.0",
        "Address the mesh listens on. Only devices of this mind can complete a handshake.",
    ),
    SettingSpec(
        "mesh_port", "mesh", "port", "KIANA_MESH_PORT", int, 7475,
        "TCP port of the mesh (peer links and pairing). 0 picks a free port.",
    ),
    SettingSpec(
        "mesh_discovery", "mesh", "discovery", "KIANA_MESH_DISCOVERY", bool, True,
        "Advertise and browse _kiana._tcp.local. by mDNS (an opaque mind tag, no names).",
    ),
    SettingSpec(
        "mesh_peers", "mesh", "peers", "KIANA_MESH_PEERS", str, "",
        "Comma-separated host:port of peers to dial on networks without multicast.",
    ),
    SettingSpec(
        "mesh_ice_servers", "mesh", "ice_servers", "KIANA_MESH_ICE_SERVERS", str, "",
        "Comma-separated stun:/turn: URLs for WebRTC links. Empty: no STUN/TURN is contacted.",
    ),
    SettingSpec(
        "mesh_turn_username", "mesh", "turn_username", "KIANA_MESH_TURN_USERNAME", str, "",
        "Username for the turn: servers in mesh.ice_servers.",
    ),
    SettingSpec(
        "mesh_turn_password", "mesh", "turn_password", "KIANA_MESH_TURN_PASSWORD", str, "",
        "Password for the turn: servers in mesh.ice_servers.",
    ),
    SettingSpec(
        "mesh_relay_only", "mesh", "relay_only", "KIANA_MESH_RELAY_ONLY", bool, False,
        "WebRTC links use TURN relay candidates only (hides this device's addresses from peers).",
    ),
    SettingSpec(
        "mesh_heartbeat_ms", "mesh", "heartbeat_ms", "KIANA_MESH_HEARTBEAT_MS", int, 2000,
        "Interval of link heartbeats; a peer is suspect after 2 missed, down after 5.",
    ),
    SettingSpec(
        "mesh_max_message_bytes", "mesh", "max_message_bytes", "KIANA_MESH_MAX_MESSAGE_BYTES",
        int, 1024 * 1024, "Largest end-to-end message body accepted or sent.",
    ),
    SettingSpec(
        "mesh_message_ttl", "mesh", "message_ttl", "KIANA_MESH_MESSAGE_TTL", int, 7 * 24 * 3600,
        "Seconds a queued message waits for an offline device before it is dropped.",
    ),
    SettingSpec(
        "pairing_ttl", "mesh", "pairing_ttl", "KIANA_PAIRING_TTL", int, 600,
        "Seconds a one-time pairing code stays valid.",
    ),
)  # fmt: skip


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = env.get("KIANA_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".kiana"


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    api_require_token: bool = True
    max_body_bytes: int = 1024 * 1024
    chunk_chars: int = 1200
    log_level: str = "warning"
    model_cache: str = ""
    embedding_model: str = "all-minilm-l6-v2"
    embedding_runtime: str = "auto"
    vector_backend: str = "auto"
    qdrant_url: str = ""
    chat_backend: str = "embedded"
    chat_model: str = "qwen2.5-coder-1.5b-instruct"
    chat_url: str = ""
    chat_api_key: str = ""
    chat_threads: int = 0
    chat_context: int = 4096
    chat_timeout: int = 120
    context_tokens: int = 1024
    top_k: int = 5
    mesh_enabled: bool = True
    mesh_host: str = "0.0.0.0"
    mesh_port: int = 7475
    mesh_discovery: bool = True
    mesh_peers: str = ""
    mesh_ice_servers: str = ""
    mesh_turn_username: str = ""
    mesh_turn_password: str = ""
    mesh_relay_only: bool = False
    mesh_heartbeat_ms: int = 2000
    mesh_max_message_bytes: int = 1024 * 1024
    mesh_message_ttl: int = 7 * 24 * 3600
    pairing_ttl: int = 600
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'kiana.db'}"

    @property
    def model_cache_dir(self) -> Path:
        if self.model_cache:
            return Path(self.model_cache).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg) if xdg else Path.home() / ".cache") / "kiana"

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_FILE

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}


def load_settings(
    home: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Resolve every setting; ``overrides`` (e.g. from CLI flags) win over all else."""
    env = os.environ if environ is None else environ
    home = (home or default_home(env)).expanduser()
    file_values = _read_file(home / CONFIG_FILE)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        value, source = spec.default, "default"
        section = file_values.get(spec.section, {})
        if spec.key in section:
            value, source = (
                _coerce(spec, section[spec.key], f"{CONFIG_FILE} [{spec.section}]"),
                "file",
            )
        if spec.env in env:
            value, source = _coerce(spec, env[spec.env], spec.env), "env"
        if overrides.get(spec.name) is not None:
            value, source = _coerce(spec, overrides[spec.name], "command line"), "flag"
        values[spec.name] = value
        sources[spec.name] = source
    _validate(values)
    return Settings(home=home, sources=sources, **values)


def write_default_config(path: Path) -> None:
    """Write a config file listing every setting, commented out at its default."""
    lines = [
        "# KI_ana configuration. Uncomment a line to change a setting.",
        "# Environment variables (KIANA_*) override this file; see docs/configuration.md.",
    ]
    section = ""
    for spec in SETTINGS:
        if spec.section != section:
            section = spec.section
            lines += ["", f"[{section}]"]
        value = tomli_w.dumps({spec.key: spec.default}).strip()
        lines += [f"# {spec.doc}", f"# {value}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def redact_url(url: str) -> str:
    """Hide the password in a database URL before showing it."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def _read_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    known = {s.section: {x.key for x in SETTINGS if x.section == s.section} for s in SETTINGS}
    for section, table in data.items():
        if section not in known or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key in table:
            if key not in known[section]:
                raise ConfigError(f"{path}: unknown setting '{key}' in [{section}]")
    return data


def _coerce(spec: SettingSpec, raw: Any, where: str) -> Any:
    if spec.kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(raw, str) and raw.strip().lower() in {"0", "false", "no", "off"}:
            return False
    elif spec.kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
    elif spec.kind is str and isinstance(raw, str):
        return raw
    raise ConfigError(f"{where}: '{spec.section}.{spec.key}' must be a {spec.kind.__name__}")


def _validate(values: dict[str, Any]) -> None:
    if not 0 < values["api_port"] < 65536:
        raise ConfigError("api.port must be between 1 and 65535")
    if not 1 <= values["max_body_bytes"] <= 64 * 1024 * 1024:
        raise ConfigError("blocks.max_body_bytes must be between 1 and 64 MiB")
    if not 200 <= values["chunk_chars"] <= 100_000:
        raise ConfigError("ingest.chunk_chars must be between 200 and 100000")
    if values["log_level"] not in {"debug", "info", "warning", "error"}:
        raise ConfigError("logging.level must be one of debug, info, warning, error")
    choices = {
        "embedding_runtime": {"auto", "onnx", "torch"},
        "vector_backend": {"auto", "hnsw", "pgvector", "qdrant", "chroma"},
        "chat_backend": {"embedded", "ollama", "openai"},
    }
    for name, allowed in choices.items():
        if values[name] not in allowed:
            spec = next(s for s in SETTINGS if s.name == name)
            raise ConfigError(
                f"{spec.section}.{spec.key} must be one of {', '.join(sorted(allowed))}"
            )
    for name, low, high in (
        ("chat_threads", 0, 256),
        ("chat_context", 256, 131072),
        ("chat_timeout", 1, 3600),
        ("context_tokens", 64, 32768),
        ("top_k", 1, 50),
    ):
        if not low <= values[name] <= high:
            spec = next(s for s in SETTINGS if s.name == name)
            raise ConfigError(f"{spec.section}.{spec.key} must be between {low} and {high}")
    url = values["database_url"]
    if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("storage.database_url must start with sqlite:/// or postgresql://")
