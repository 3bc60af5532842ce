from __future__ import annotations

from pathlib import Path

import pytest

from kiana.config import SETTINGS, load_settings, redact_url, write_default_config
from kiana.errors import ConfigError


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    s = load_settings(tmp_path, environ={})
    assert s.api_host == "127.0.0.1"
    assert s.api_port == 8765
    assert s.api_require_token is True
    assert s.max_body_bytes == 1024 * 1024
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'kiana.db'}"
    assert set(s.sources.values()) == {"default"}


def test_home_from_env(tmp_path: Path) -> None:
    s = load_settings(environ={"KIANA_HOME": str(tmp_path / "x")})
    assert s.home == tmp_path / "x"


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[api]\nport = 9000\nhost = '127.0.0.2'\n")
    s = load_settings(tmp_path, environ={"KIANA_API_PORT": "9100"})
    assert (s.api_port, s.sources["api_port"]) == (9100, "env")
    assert (s.api_host, s.sources["api_host"]) == ("127.0.0.2", "file")
    s = load_settings(tmp_path, environ={"KIANA_API_PORT": "9100"}, api_port=9200)
    assert (s.api_port, s.sources["api_port"]) == (9200, "flag")


def test_default_config_file_is_commented_and_parses(tmp_path: Path) -> None:
    write_default_config(tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    for spec in SETTINGS:
        assert f"# {spec.key} = " in text
    s = load_settings(tmp_path, environ={})
    assert set(s.sources.values()) == {"default"}


@pytest.mark.parametrize(
    ("content", "env", "needle"),
    [
        ("[api\nport=1", {}, "not valid TOML"),
        ("[nope]\nx = 1\n", {}, "unknown section"),
        ("[api]\nbogus = 1\n", {}, "unknown setting"),
        ("[api]\nport = 'eighty'\n", {}, "must be a int"),
        ("", {"KIANA_API_PORT": "70000"}, "between 1 and 65535"),
        ("", {"KIANA_API_REQUIRE_TOKEN": "maybe"}, "must be a bool"),
        ("", {"KIANA_LOG_LEVEL": "loud"}, "logging.level"),
        ("", {"KIANA_DATABASE_URL": "mysql://x"}, "database_url"),
        ("", {"KIANA_MAX_BODY_BYTES": "0"}, "max_body_bytes"),
    ],
)
def test_bad_config_is_a_clear_error(
    tmp_path: Path, content: str, env: dict[str, str], needle: str
) -> None:
    (tmp_path / "config.toml").write_text(content)
    with pytest.raises(ConfigError, match=needle):
        load_settings(tmp_path, environ=env)


def test_bool_env_values(tmp_path: Path) -> None:
    assert (
        load_settings(tmp_path, environ={"KIANA_API_REQUIRE_TOKEN": "off"}).api_require_token
        is False
    )
    assert (
        load_settings(tmp_path, environ={"KIANA_API_REQUIRE_TOKEN": "YES"}).api_require_token
        is True
    )


def test_redact_url() -> None:
    assert redact_url("postgresql://me:secret@host/db") == "postgresql://me:***@host/db"
    assert redact_url("postgresql://me@host/db") == "postgresql://me@host/db"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
