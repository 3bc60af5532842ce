"""Browser sessions for the dashboard: the API token, exchanged once for a cookie.

``POST /auth/login`` with the node's token sets two cookies: ``kiana_session``
(httpOnly, SameSite=Strict: scripts cannot read it, other sites cannot send it)
and ``kiana_csrf`` (readable by the dashboard). A request authenticated by the
session cookie that changes anything (not GET/HEAD/OPTIONS) must repeat the CSRF
value in ``X-CSRF-Token`` (double submit), so a forged form post from elsewhere
fails even where SameSite is not honoured. Sessions live in memory: restarting
the node logs browsers out. Failed logins are limited to 10 a minute.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

SESSION_COOKIE = "kiana_session"
CSRF_COOKIE = "kiana_csrf"
CSRF_HEADER = b"x-csrf-token"
SESSION_TTL_S = 7 * 24 * 3600
FAILED_LOGINS_PER_MINUTE = 10
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class Session:
    csrf: str
    expires: float


@dataclass(slots=True)
class Sessions:
    items: dict[str, Session] = field(default_factory=dict)
    failures: deque[float] = field(default_factory=deque)

    def create(self) -> tuple[str, Session]:
        self._expire()
        sid = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(24), expires=time.time() + SESSION_TTL_S)
        self.items[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self.items.get(sid)
        if session is None or session.expires < time.time():
            self.items.pop(sid, None)
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self.items.pop(sid, None)

    def allow_attempt(self) -> bool:
        now = time.time()
        while self.failures and self.failures[0] < now - 60:
            self.failures.popleft()
        return len(self.failures) < FAILED_LOGINS_PER_MINUTE

    def failed(self) -> None:
        self.failures.append(time.time())

    def _expire(self) -> None:
        now = time.time()
        for sid in [s for s, v in self.items.items() if v.expires < now]:
            del self.items[sid]


def cookie(scope_headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for key, value in scope_headers:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return v
    return None


def csrf_ok(scope_headers: list[tuple[bytes, bytes]], session: Session) -> bool:
    for key, value in scope_headers:
        if key == CSRF_HEADER:
            return hmac.compare_digest(value, session.csrf.encode())
    return False
