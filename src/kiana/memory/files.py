"""Reading user files for ingestion, with clear errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

from kiana.errors import InputError

MAX_FILE_BYTES = 50 * 1024 * 1024


def read_text_file(path: Path) -> str:
    """Return the file's text (UTF-8, BOM stripped) or raise ``InputError``."""
    try:
        if path.is_dir():
            raise InputError(f"{path} is a directory; pass the files inside it (e.g. {path}/*.md)")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path} is {size // (1024 * 1024)} MiB; the limit is 50 MiB")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{path} does not exist") from exc
    except PermissionError as exc:
        raise InputError(f"{path} is not readable (permission denied)") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if b"\x00" in data[:8192]:
        raise InputError(f"{path} looks like a binary file; only text files can be added")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text") from exc
    return text
