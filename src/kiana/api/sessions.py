"""Browser sessions for the dashboard: the API token, exchanged once for a cookie.

``POST /auth/login`` with the node's token sets two cookies: ``kiana_session``
(httpOnly, SameSite=Strict: scripts cannot read it, other sites cannot send it)
and ``kiana_csrf`` (readable by the dashboard). A request authenticated by the
session cookie that changes anything (not GET/HEAD/OPTIONS) must repeat the CSRF
value in ``X-CSRF-Token`` (double submit), so a forged form post from elsewhere
fails even where SameSite is not honoured. Sessions live in memory: restarting
the node logs browsers out. Failed logins are limited to 10 a minute.

A one-time login link (``kiana open``, ``kiana serve``) carries a random nonce
(256 bits) instead of the token: ``POST /api/v1/auth/link`` (authenticated) makes
one, ``POST /auth/login`` with ``{"once": ...}`` exchanges it for the same
cookies. A nonce works once and for ``LINK_TTL_S`` seconds; only its SHA-256 is
kept, and a spent one is remembered for a while so the login page can say
whether the link was used or expired. A wrong, used or expired nonce counts as
a failed login.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

SESSION_COOKIE = "kiana_session"
CSRF_COOKIE = "kiana_csrf"
CSRF_HEADER = b"x-csrf-token"
SESSION_TTL_S = 7 * 24 * 3600
FAILED_LOGINS_PER_MINUTE = 10
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LINK_TTL_S = 60.0
LINK_NONCE_BYTES = 32
MAX_LINKS = 100  # open (unused, unexpired) links at once; the oldest goes first
SPENT_MEMORY_S = 3600.0  # how long a used or expired link is told apart from a wrong one
MAX_SPENT = 1000


class LinkCheck(enum.Enum):
    OK = "ok"
    USED = "used"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


def _digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    csrf: str
    expires: float


@dataclass(slots=True)
class Sessions:
    items: dict[str, Session] = field(default_factory=dict)
    failures: deque[float] = field(default_factory=deque)
    link_ttl_s: float = LINK_TTL_S
    links: dict[str, float] = field(default_factory=dict)  # sha256(nonce) -> expires (monotonic)
    spent: dict[str, tuple[LinkCheck, float]] = field(default_factory=dict)  # -> (why, forget at)
    # Links are made from the event loop and by ``kiana serve``'s start-up thread.
    _link_lock: threading.Lock = field(default_factory=threading.Lock)

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

    def new_link(self, now: float | None = None) -> str:
        """A fresh one-time login nonce, valid for ``link_ttl_s`` seconds."""
        now = time.monotonic() if now is None else now
        with self._link_lock:
            self._expire_links(now)
            while len(self.links) >= MAX_LINKS:
                oldest = min(self.links, key=self.links.__getitem__)
                del self.links[oldest]
                self.spent[oldest] = (LinkCheck.EXPIRED, now + SPENT_MEMORY_S)
            nonce = secrets.token_urlsafe(LINK_NONCE_BYTES)
            self.links[_digest(nonce)] = now + self.link_ttl_s
            return nonce

    def use_link(self, nonce: str, now: float | None = None) -> LinkCheck:
        """Spend a nonce: OK once, then USED; EXPIRED after its time; UNKNOWN if never made."""
        now = time.monotonic() if now is None else now
        with self._link_lock:
            self._expire_links(now)
            key = _digest(nonce)
            if self.links.pop(key, None) is not None:
                self.spent[key] = (LinkCheck.USED, now + SPENT_MEMORY_S)
                return LinkCheck.OK
            why, _ = self.spent.get(key, (LinkCheck.UNKNOWN, 0.0))
            return why

    def _expire_links(self, now: float) -> None:
        for key in [k for k, expires in self.links.items() if expires <= now]:
            del self.links[key]
            self.spent[key] = (LinkCheck.EXPIRED, now + SPENT_MEMORY_S)
        for key in [k for k, (_, until) in self.spent.items() if until <= now]:
            del self.spent[key]
        while len(self.spent) > MAX_SPENT:  # oldest first (insertion order)
            del self.spent[next(iter(self.spent))]

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
