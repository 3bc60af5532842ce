"""Noise XX: round trips, interoperability with ``noiseprotocol``, and every way to fail."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiana.errors import FrameError, HandshakeError
from kiana.mesh.noise import CipherState, NoiseXX, generate_private, public_key

PROLOGUE = b"kiana-mesh-v1\x00mind-1"
NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
I_STATIC = bytes(range(1, 33))
R_STATIC = bytes(range(33, 65))


def make_pair(prologue_r: bytes = PROLOGUE) -> tuple[NoiseXX, NoiseXX]:
    i = NoiseXX(initiator=True, static_private=I_STATIC, prologue=PROLOGUE)
    r = NoiseXX(initiator=False, static_private=R_STATIC, prologue=prologue_r)
    return i, r


def handshake(i: NoiseXX, r: NoiseXX) -> tuple[bytes, bytes, bytes]:
    m1 = i.write_message(b"one")
    assert r.read_message(m1) == b"one"
    m2 = r.write_message(b"two")
    assert i.read_message(m2) == b"two"
    m3 = i.write_message(b"three")
    assert r.read_message(m3) == b"three"
    return m1, m2, m3


def test_keys() -> None:
    a = generate_private()
    assert len(a) == 32 and a != generate_private()
    assert len(public_key(a)) == 32
    with pytest.raises(ValueError):
        public_key(b"short")


def test_full_handshake_and_transport() -> None:
    i, r = make_pair()
    assert not i.complete and i.remote_static is None
    handshake(i, r)
    assert i.complete and r.complete
    assert i.remote_static == public_key(R_STATIC)
    assert r.remote_static == public_key(I_STATIC)
    assert i.handshake_hash == r.handshake_hash and len(i.handshake_hash) == 32
    i_send, i_recv = i.split()
    r_send, r_recv = r.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping")) == b"ping"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong")) == b"pong"
    for n in range(1000):
        frame = i_send.encrypt_with_ad(b"", n.to_bytes(4, "big"))
        assert r_recv.decrypt_with_ad(b"", frame) == n.to_bytes(4, "big")
    assert i_send.nonce == r_recv.nonce == 1001


def test_deterministic_with_injected_ephemerals() -> None:
    def run() -> bytes:
        i = NoiseXX(
            initiator=True,
            static_private=I_STATIC,
            prologue=PROLOGUE,
            ephemeral_private=b"\x05" * 32,
        )
        r = NoiseXX(
            initiator=False,
            static_private=R_STATIC,
            prologue=PROLOGUE,
            ephemeral_private=b"\x06" * 32,
        )
        handshake(i, r)
        return i.handshake_hash

    assert run() == run()


# -- interoperability with the noiseprotocol package -------------------------------


def their_side(initiator: bool, static: bytes) -> object:
    from noise.connection import Keypair, NoiseConnection

    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.start_handshake()
    return conn


def test_interop_our_initiator_their_responder() -> None:
    them = their_side(False, R_STATIC)
    us = NoiseXX(initiator=True, static_private=I_STATIC, prologue=PROLOGUE)
    assert bytes(them.read_message(us.write_message(b"hello"))) == b"hello"  # type: ignore[attr-defined]
    assert us.read_message(bytes(them.write_message(b"from them"))) == b"from them"  # type: ignore[attr-defined]
    assert bytes(them.read_message(us.write_message(b"last"))) == b"last"  # type: ignore[attr-defined]
    assert them.handshake_finished and us.complete  # type: ignore[attr-defined]
    assert us.handshake_hash == them.get_handshake_hash()  # type: ignore[attr-defined]
    assert us.remote_static == public_key(R_STATIC)
    send, recv = us.split()
    for n in range(20):
        assert them.decrypt(send.encrypt_with_ad(b"", b"up %d" % n)) == b"up %d" % n  # type: ignore[attr-defined]
        assert recv.decrypt_with_ad(b"", them.encrypt(b"down %d" % n)) == b"down %d" % n  # type: ignore[attr-defined]


def test_interop_their_initiator_our_responder() -> None:
    them = their_side(True, I_STATIC)
    us = NoiseXX(initiator=False, static_private=R_STATIC, prologue=PROLOGUE)
    assert us.read_message(bytes(them.write_message(b"hello"))) == b"hello"  # type: ignore[attr-defined]
    assert bytes(them.read_message(us.write_message(b"from us"))) == b"from us"  # type: ignore[attr-defined]
    assert us.read_message(bytes(them.write_message(b"last"))) == b"last"  # type: ignore[attr-defined]
    assert us.complete and us.handshake_hash == them.get_handshake_hash()  # type: ignore[attr-defined]
    assert us.remote_static == public_key(I_STATIC)
    send, recv = us.split()
    for n in range(20):
        assert recv.decrypt_with_ad(b"", them.encrypt(b"up %d" % n)) == b"up %d" % n  # type: ignore[attr-defined]
        assert them.decrypt(send.encrypt_with_ad(b"", b"down %d" % n)) == b"down %d" % n  # type: ignore[attr-defined]


# -- handshake failures -------------------------------------------------------------


def test_wrong_prologue_fails() -> None:
    i, r = make_pair(prologue_r=b"kiana-mesh-v1\x00mind-2")
    r.read_message(i.write_message())  # message 1 is not authenticated yet
    with pytest.raises(HandshakeError):
        i.read_message(r.write_message())


@pytest.mark.parametrize("which", [0, 1, 2])
def test_tampered_handshake_message_fails(which: int) -> None:
    """Flip every byte of message ``which`` in turn; the handshake must never complete."""
    length = len(handshake(*make_pair())[which])
    for pos in range(length):
        i, r = make_pair()
        sides = [(i, r), (r, i), (i, r)]  # (writer, reader) of each message
        with pytest.raises(HandshakeError):
            for n, (writer, reader) in enumerate(sides):
                msg = bytearray(writer.write_message([b"one", b"two", b"three"][n]))
                if n == which:
                    msg[pos] ^= 0x01
                reader.read_message(bytes(msg))
        assert not r.complete


def test_failed_handshake_stays_failed() -> None:
    i, r = make_pair()
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    bad = bytearray(i.write_message(b"three"))
    bad[-1] ^= 1
    with pytest.raises(HandshakeError):
        r.read_message(bytes(bad))
    assert r.remote_static is None and not r.complete
    with pytest.raises(HandshakeError):
        r.read_message(bytes(bad[:-1]) + bytes([bad[-1] ^ 1]))  # even the genuine message


def test_truncated_and_garbage_messages() -> None:
    i, r = make_pair()
    with pytest.raises(HandshakeError):
        r.read_message(i.write_message()[:31])
    i, r = make_pair()
    r.read_message(i.write_message())
    m2 = r.write_message()
    with pytest.raises(HandshakeError):
        i.read_message(m2[:-1])
    i, r = make_pair()
    r.read_message(i.write_message())
    r.write_message()
    with pytest.raises(HandshakeError):
        i.read_message(b"\xff" * 200)
    with pytest.raises(HandshakeError):
        r.read_message(b"x" * 70_000)
    i, r = make_pair()
    with pytest.raises(HandshakeError):
        r.read_message("not bytes")  # type: ignore[arg-type]


def test_low_order_ephemeral_rejected() -> None:
    i, r = make_pair()
    r.read_message(b"\x00" * 32)  # the responder's DH happens when it writes
    with pytest.raises(HandshakeError):
        r.write_message()
    i, r = make_pair()
    r.read_message(i.write_message())
    m2 = r.write_message()
    with pytest.raises(HandshakeError):
        i.read_message(b"\x00" * 32 + m2[32:])


def test_replayed_handshake_messages_fail() -> None:
    i, r = make_pair()
    m1, m2, m3 = handshake(i, r)
    r2 = NoiseXX(initiator=False, static_private=R_STATIC, prologue=PROLOGUE)
    r2.read_message(m1)  # an attacker replays message 1 ...
    m2_new = r2.write_message(b"two")
    assert m2_new[:32] != m2[:32]  # ... and gets a fresh responder ephemeral
    with pytest.raises(HandshakeError):
        r2.read_message(m3)  # so the old message 3 does not complete it


def test_out_of_turn_calls() -> None:
    i, r = make_pair()
    with pytest.raises(HandshakeError):
        i.read_message(b"\x00" * 100)
    with pytest.raises(HandshakeError):
        r.write_message()
    with pytest.raises(HandshakeError):
        i.split()
    m1 = i.write_message()  # the refused calls did not disturb the state
    with pytest.raises(HandshakeError):
        i.write_message()
    r.read_message(m1)
    with pytest.raises(HandshakeError):
        r.read_message(m1)
    i.read_message(r.write_message())
    r.read_message(i.write_message())
    for side in (i, r):
        with pytest.raises(HandshakeError):
            side.write_message()
        with pytest.raises(HandshakeError):
            side.read_message(b"\x00" * 64)
        side.split()
        with pytest.raises(HandshakeError):
            side.split()  # a second split would reuse nonces


def test_oversized_payload_refused() -> None:
    i, _ = make_pair()
    with pytest.raises(HandshakeError):
        i.write_message(b"x" * 65535)
    i.write_message(b"x" * (65535 - 32))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        NoiseXX(initiator=True, static_private=b"short", prologue=b"")
    with pytest.raises(ValueError):
        NoiseXX(initiator=True, static_private=I_STATIC, prologue=b"", ephemeral_private=b"x")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), step=st.sampled_from([0, 1, 2]))
def test_random_bytes_only_raise_handshake_error(data: bytes, step: int) -> None:
    i, r = make_pair()
    target = r
    if step >= 1:
        r.read_message(i.write_message())
        r.write_message()
        target = i
    if step == 2:
        i, r = make_pair()
        r.read_message(i.write_message())
        i.read_message(r.write_message())
        target = r
    try:
        target.read_message(data)
    except HandshakeError:
        assert not target.complete
    else:
        assert step == 0 and len(data) >= 32  # message 1 carries no authentication


# -- transport ----------------------------------------------------------------------


def transport() -> tuple[CipherState, CipherState]:
    i, r = make_pair()
    handshake(i, r)
    return i.split()[0], r.split()[1]


def test_tampered_reordered_replayed_frames_fail() -> None:
    send, recv = transport()
    f0, f1, f2 = (send.encrypt_with_ad(b"", b"frame %d" % n) for n in range(3))
    bad = bytearray(f0)
    bad[0] ^= 1
    with pytest.raises(FrameError):
        recv.decrypt_with_ad(b"", bytes(bad))
    assert recv.nonce == 0  # a failure does not advance the counter
    with pytest.raises(FrameError):
        recv.decrypt_with_ad(b"", f1)  # reordered
    with pytest.raises(FrameError):
        recv.decrypt_with_ad(b"", f0[:10])  # truncated below the tag
    with pytest.raises(FrameError):
        recv.decrypt_with_ad(b"other ad", f0)
    assert recv.decrypt_with_ad(b"", f0) == b"frame 0"
    with pytest.raises(FrameError):
        recv.decrypt_with_ad(b"", f0)  # replayed
    assert recv.decrypt_with_ad(b"", f1) == b"frame 1"
    assert recv.decrypt_with_ad(b"", f2) == b"frame 2"


def test_message_size_limits() -> None:
    send, recv = transport()
    frame = send.encrypt_with_ad(b"", b"x" * (65535 - 16))
    assert len(frame) == 65535
    assert recv.decrypt_with_ad(b"", frame) == b"x" * (65535 - 16)
    with pytest.raises(FrameError):
        send.encrypt_with_ad(b"", b"x" * (65535 - 15))
    with pytest.raises(FrameError):
        recv.decrypt_with_ad(b"", b"x" * 65536)


def test_nonce_exhaustion() -> None:
    key = b"k" * 32
    send = CipherState(key, nonce=2**64 - 2)
    recv = CipherState(key, nonce=2**64 - 2)
    assert recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"last")) == b"last"
    assert send.nonce == 2**64 - 1
    with pytest.raises(FrameError, match="nonce exhausted"):
        send.encrypt_with_ad(b"", b"again")
    with pytest.raises(FrameError, match="nonce exhausted"):
        recv.decrypt_with_ad(b"", b"\x00" * 32)
    with pytest.raises(ValueError):
        CipherState(key, nonce=2**64)
    with pytest.raises(ValueError):
        CipherState(b"short")
