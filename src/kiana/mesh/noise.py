"""The Noise XX handshake (``Noise_XX_25519_ChaChaPoly_SHA256``), sans-I/O.

A link between two devices starts with this handshake (Noise spec rev 34)::

    -> e
    <- e, ee, s, es
    -> s, se

Why XX: both sides prove their static key (mutual authentication, no key known in
advance, so a device can reach any member of its mind); the initiator's static key is
sent only after the responder proved its own, encrypted, so a passive listener learns
neither key and an active prober learns only the responder's (identity hiding for the
initiator); both sides mix a fresh ephemeral key into every key they derive, so a
recorded handshake message replayed into a new session yields different keys and fails
(replay resistance). The prologue (``kiana-mesh-v1\\0`` + mind id) is hashed in, so
devices of another mind fail at the first encrypted field.

The classes only turn bytes into bytes: :class:`NoiseXX` produces and consumes the three
handshake messages, :meth:`NoiseXX.split` gives two :class:`CipherState` objects for the
transport. Built on PyNaCl (X25519, ChaCha20-Poly1305 IETF) and hashlib/hmac (SHA-256,
HKDF); the tests check it against the ``noiseprotocol`` package.

Errors: anything wrong in a handshake message (short, garbage, tampered, wrong prologue,
low-order key, out of turn) raises :class:`~kiana.errors.HandshakeError`, and the
handshake object is then dead; a transport frame that fails authentication, or a nonce
that would repeat, raises :class:`~kiana.errors.FrameError`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from nacl import bindings
from nacl.exceptions import CryptoError

from kiana.errors import FrameError, HandshakeError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
_MAX_NONCE = 2**64 - 1  # reserved by the spec; never used to encrypt


def generate_private() -> bytes:
    """A fresh X25519 private key (32 random bytes; clamped when used)."""
    return secrets.token_bytes(DHLEN)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    if len(private) != DHLEN:
        raise ValueError("an X25519 private key is 32 bytes")
    return bytes(bindings.crypto_scalarmult_base(private))


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        shared = bytes(bindings.crypto_scalarmult(private, public))
    except CryptoError as exc:  # libsodium refuses small-order points itself
        raise HandshakeError("peer sent a low-order public key") from exc
    if not any(shared):  # pragma: no cover - older libsodium returned zeros instead
        raise HandshakeError("peer sent a low-order public key")
    return shared


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp, b"\x01", "sha256")
    out2 = hmac.digest(temp, out1 + b"\x02", "sha256")
    return out1, out2


class CipherState:
    """ChaCha20-Poly1305 with a 64-bit counter nonce; one direction of a link."""

    __slots__ = ("_key", "_n")

    def __init__(self, key: bytes | None = None, *, nonce: int = 0) -> None:
        if key is not None and len(key) != 32:
            raise ValueError("a ChaChaPoly key is 32 bytes")
        if not 0 <= nonce <= _MAX_NONCE:
            raise ValueError("nonce out of range")
        self._key = key
        self._n = nonce

    @property
    def nonce(self) -> int:
        return self._n

    def _nonce_bytes(self) -> bytes:
        if self._n >= _MAX_NONCE:
            raise FrameError("nonce exhausted")
        return b"\x00\x00\x00\x00" + self._n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._key is None:  # before the first MixKey of a handshake
            return plaintext
        if len(plaintext) + TAGLEN > MAX_MESSAGE:
            raise FrameError("message too large")
        nonce = self._nonce_bytes()
        out = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, nonce, self._key)
        self._n += 1
        return bytes(out)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._key is None:
            return ciphertext
        if not TAGLEN <= len(ciphertext) <= MAX_MESSAGE:
            raise FrameError("frame has a bad length")
        nonce = self._nonce_bytes()
        try:
            out = bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, nonce, self._key
            )
        except CryptoError as exc:
            raise FrameError("frame failed authentication") from exc
        self._n += 1  # only on success: a bad frame does not shift the counter
        return bytes(out)


class _SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self, prologue: bytes) -> None:
        self.h = PROTOCOL_NAME  # exactly HASHLEN bytes, so used as is
        self.ck = self.h
        self.cipher = CipherState()
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext


class NoiseXX:
    """One side of a Noise XX handshake: three messages, then :meth:`split`."""

    __slots__ = ("_e", "_failed", "_initiator", "_re", "_rs", "_s", "_split", "_ss", "_step")

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        prologue: bytes,
        ephemeral_private: bytes | None = None,
    ) -> None:
        if len(static_private) != DHLEN:
            raise ValueError("an X25519 private key is 32 bytes")
        self._initiator = initiator
        self._s = static_private
        self._e = ephemeral_private if ephemeral_private is not None else generate_private()
        if len(self._e) != DHLEN:
            raise ValueError("an X25519 private key is 32 bytes")
        self._ss = _SymmetricState(prologue)
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._step = 0  # messages done; the initiator writes messages 0 and 2
        self._failed = False
        self._split = False

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise HandshakeError("handshake already failed")
        if self.complete:
            raise HandshakeError("handshake already complete")
        if writing != ((self._step % 2 == 0) == self._initiator):
            raise HandshakeError("handshake message out of turn")

    def write_message(self, payload: bytes = b"") -> bytes:
        self._check_turn(writing=True)
        overhead = (DHLEN, DHLEN + DHLEN + 2 * TAGLEN, DHLEN + 2 * TAGLEN)[self._step]
        if len(payload) + overhead > MAX_MESSAGE:
            raise HandshakeError("handshake payload too large")
        ss = self._ss
        try:
            out = b""
            if self._step < 2:  # token e
                e_pub = public_key(self._e)
                ss.mix_hash(e_pub)
                out += e_pub
            if self._step == 1:  # tokens ee, s, es (responder)
                assert self._re is not None
                ss.mix_key(_dh(self._e, self._re))
                out += ss.encrypt_and_hash(public_key(self._s))
                ss.mix_key(_dh(self._s, self._re))
            if self._step == 2:  # tokens s, se (initiator)
                assert self._re is not None
                out += ss.encrypt_and_hash(public_key(self._s))
                ss.mix_key(_dh(self._s, self._re))
            out += ss.encrypt_and_hash(payload)
        except (HandshakeError, FrameError) as exc:
            self._failed = True
            raise HandshakeError(f"handshake failed: {exc}") from exc
        self._step += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        self._check_turn(writing=False)
        if not isinstance(message, bytes | bytearray | memoryview):
            raise HandshakeError("handshake message is not bytes")
        msg = bytes(message)
        minimum = (DHLEN, DHLEN + DHLEN + 2 * TAGLEN, DHLEN + 2 * TAGLEN)[self._step]
        if not minimum <= len(msg) <= MAX_MESSAGE:
            self._failed = True
            raise HandshakeError("handshake message has a bad length")
        ss = self._ss
        try:
            if self._step < 2:  # token e
                self._re, msg = msg[:DHLEN], msg[DHLEN:]
                ss.mix_hash(self._re)
            if self._step == 1:  # tokens ee, s, es (initiator reads)
                assert self._re is not None
                ss.mix_key(_dh(self._e, self._re))
                rs, msg = msg[: DHLEN + TAGLEN], msg[DHLEN + TAGLEN :]
                self._rs = ss.decrypt_and_hash(rs)
                ss.mix_key(_dh(self._e, self._rs))
            if self._step == 2:  # tokens s, se (responder reads)
                rs, msg = msg[: DHLEN + TAGLEN], msg[DHLEN + TAGLEN :]
                self._rs = ss.decrypt_and_hash(rs)
                ss.mix_key(_dh(self._e, self._rs))
            payload = ss.decrypt_and_hash(msg)
        except (HandshakeError, FrameError) as exc:
            self._failed = True
            self._rs = None
            raise HandshakeError(f"handshake failed: {exc}") from exc
        self._step += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` for this side. Only once, so no two ciphers share a key."""
        if not self.complete or self._failed:
            raise HandshakeError("handshake not complete")
        if self._split:
            raise HandshakeError("handshake already split")
        self._split = True
        k1, k2 = _hkdf(self._ss.ck, b"")
        c1, c2 = CipherState(k1), CipherState(k2)
        return (c1, c2) if self._initiator else (c2, c1)
