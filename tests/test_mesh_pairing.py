"""Pairing (SPAKE2 codes), membership records and enrolment, driven in memory."""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kiana.blocks import verify_block
from kiana.config import Settings, load_settings
from kiana.errors import (
    BadSignatureError,
    CodeExpiredError,
    HomeError,
    IdMismatchError,
    InputError,
    MalformedBlockError,
    NotFoundError,
    NotMemberError,
    PairingError,
    RateLimitedError,
    UnknownFormatError,
    WrongCodeError,
)
from kiana.home import genesis_json
from kiana.identity import DeviceKeys
from kiana.identity.membership import (
    MembershipRecord,
    apply_membership,
    parse_membership,
    record_json,
    replay_membership,
    sign_membership,
    store_authority_key,
    verify_membership,
)
from kiana.mesh.codes import WORDS, PairingCode, new_code, parse_code
from kiana.mesh.enroll import (
    admit_device,
    create_joined_home,
    member_records,
    revoke_device,
)
from kiana.mesh.pairing import (
    MAX_HANDSHAKE_BYTES,
    HostSession,
    JoinerSession,
    JoinRequest,
    PairingHost,
    abort_message,
)
from kiana.node import Node

T = 1_700_000_000_000
TTL = 600_000


def _settings(path: Path) -> Settings:
    return load_settings(path, environ={})


@pytest.fixture
def inviter(tmp_path: Path) -> Iterator[Node]:
    node = Node.init(_settings(tmp_path / "laptop"), mind_name="Home", device_name="laptop")
    node.auto_embed = False
    yield node
    node.close()


@pytest.fixture
def host() -> PairingHost:
    return PairingHost(rng=random.Random(7))


@dataclass
class Attempt:
    joiner: JoinerSession
    session: HostSession
    m3: bytes


def _handshake(
    host: PairingHost,
    code: PairingCode,
    keys: DeviceKeys | None = None,
    *,
    now: int = T,
    name: str = "phone",
    new_person: str = "",
) -> Attempt:
    joiner = JoinerSession(code, keys or DeviceKeys.generate(), name=name, new_person=new_person)
    session, m2 = host.accept(joiner.start(), now)
    m3 = joiner.receive(m2)
    assert m3 is not None and joiner.state == "welcome"
    return Attempt(joiner, session, m3)


def _join(
    inviter: Node,
    host: PairingHost,
    home: Path,
    *,
    role: str = "member",
    new_person: str = "",
    now: int = T,
) -> tuple[DeviceKeys, JoinRequest]:
    """The whole flow, inviter and joiner, ending with the joiner's home written."""
    code = host.invite(TTL, now)
    keys = DeviceKeys.generate()
    a = _handshake(host, parse_code(str(code)), keys, now=now + 1, new_person=new_person)
    request = a.session.receive(a.m3, now + 2)
    admit_device(inviter, request, role=role)
    m4 = a.session.admit(genesis_json(inviter.genesis), member_records(inviter))
    assert a.joiner.receive(m4) is None and a.joiner.done
    create_joined_home(_settings(home), keys, a.joiner.result)
    return keys, request


def _device_count(node: Node) -> int:
    return len(node.store.devices())


# -- the happy path ------------------------------------------------------------------


def test_full_pairing_joins_the_mind(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    home = tmp_path / "phone"
    keys, request = _join(inviter, host, home)
    assert request.device == keys.device_id and request.name == "phone"
    assert request.sign_key == keys.sign_public and request.box_key == keys.box_public
    assert host.open_invitations(T + 3) == []  # the code is used up

    row = inviter.store.device(keys.device_id)
    assert row is not None and row.active
    assert (row.role, row.name, row.person) == ("member", "phone", inviter.genesis.person)
    assert parse_membership(row.record).by == inviter.device_id

    with Node.open(_settings(home)) as phone:
        phone.auto_embed = False
        assert phone.mind_id == inviter.mind_id and phone.device_id == keys.device_id
        assert {d.device_id for d in phone.store.devices()} == {
            inviter.device_id,
            keys.device_id,
        }
        me = phone.store.device(keys.device_id)
        assert me is not None and me.role == "member" and me.person == inviter.genesis.person
        assert phone.status()["device"]["name"] == "phone"
        # a block written on the phone verifies on the laptop: same mind, known author
        block = phone.remember("The spare key is under the blue pot").block
        verify_block(block, inviter.store.device_key)
    assert (home / "keys" / "device.json").stat().st_mode & 0o077 == 0
    assert (home / "api-token").exists() and (home / "config.toml").exists()


def test_join_as_a_new_person(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    keys, request = _join(inviter, host, tmp_path / "tablet", new_person="Anna")
    assert request.new_person == "Anna"
    row = inviter.store.device(keys.device_id)
    assert row is not None and row.person != inviter.genesis.person
    assert row.person.startswith("p-") and len(row.person) == 10
    # the inviter may also decide on a new person without the joiner asking
    code = host.invite(TTL, T + 10)
    a = _handshake(host, code, now=T + 11, name="watch")
    req = a.session.receive(a.m3, T + 12)
    record = admit_device(inviter, req, new_person_name="Ben")
    assert record.person not in {row.person, inviter.genesis.person}
    # or name an existing person
    code = host.invite(TTL, T + 20)
    a = _handshake(host, code, now=T + 21, name="tv")
    record = admit_device(inviter, a.session.receive(a.m3, T + 22), person=row.person)
    assert record.person == row.person


def test_an_admitted_authority_can_invite_in_turn(
    inviter: Node, host: PairingHost, tmp_path: Path
) -> None:
    _join(inviter, host, tmp_path / "desktop", role="authority")
    with Node.open(_settings(tmp_path / "desktop")) as desktop:
        second_host = PairingHost()
        keys, _ = _join(desktop, second_host, tmp_path / "phone", now=T + 100)
        records = member_records(desktop)
        assert len(records) == 2
    with Node.open(_settings(tmp_path / "phone")) as phone:
        me = phone.store.device(keys.device_id)
        assert me is not None and parse_membership(me.record).by != inviter.device_id
        assert len(phone.store.devices()) == 3
    # records given in any order replay from the genesis
    replayed = replay_membership(inviter.genesis, [parse_membership(r) for r in records[::-1]])
    assert [r.role for r in replayed] == ["authority", "member"]


def test_several_open_codes_have_distinct_nameplates(host: PairingHost) -> None:
    codes = [host.invite(TTL, T) for _ in range(60)]
    assert len({c.nameplate for c in codes}) == 60
    assert host.next_expiry() == T + TTL
    assert host.cancel(codes[0].nameplate) and not host.cancel(codes[0].nameplate)
    assert len(host.open_invitations(T)) == 59
    assert host.open_invitations(T + TTL) == []
    with pytest.raises(InputError):
        host.invite(0, T)


def test_too_many_open_codes(host: PairingHost) -> None:
    for _ in range(100):
        host.invite(TTL, T)
    with pytest.raises(PairingError, match="already open"):
        host.invite(TTL, T)


# -- wrong, expired, used codes and the rate limit -------------------------------------


def test_wrong_code_fails_on_both_sides_and_burns_the_code(
    inviter: Node, host: PairingHost, tmp_path: Path
) -> None:
    code = host.invite(TTL, T)
    other = next(w for w in WORDS if w != code.words[1])
    wrong = PairingCode(code.nameplate, (code.words[0], other))
    joiner = JoinerSession(wrong, DeviceKeys.generate(), name="phone")
    session, m2 = host.accept(joiner.start(), T + 1)
    with pytest.raises(WrongCodeError, match="does not match") as caught:
        joiner.receive(m2)
    assert joiner.state == "failed"
    with pytest.raises(WrongCodeError):
        session.receive(abort_message(caught.value), T + 2)
    assert session.state == "failed"
    # the right code, tried now, is gone
    right = JoinerSession(code, DeviceKeys.generate(), name="phone")
    with pytest.raises(CodeExpiredError):
        host.accept(right.start(), T + 3)
    assert _device_count(inviter) == 1
    assert not (tmp_path / "phone").exists()


def test_a_joiner_ignoring_the_mismatch_fails_the_host_confirmation(host: PairingHost) -> None:
    code = host.invite(TTL, T)
    wrong = PairingCode(code.nameplate, (code.words[1], code.words[0]))
    if wrong == code:
        wrong = PairingCode(code.nameplate, ("acorn", "zipper"))
    joiner = JoinerSession(wrong, DeviceKeys.generate(), name="phone")
    session, _ = host.accept(joiner.start(), T + 1)
    forged = json.dumps(
        {
            "v": 1,
            "t": "confirm",
            "confirm": "00" * 32,
            "sealed": base64.b64encode(b"x" * 60).decode(),
        }
    ).encode()
    with pytest.raises(WrongCodeError):
        session.receive(forged, T + 2)
    with pytest.raises(PairingError, match="already failed"):
        session.receive(forged, T + 3)
    with pytest.raises(PairingError):
        session.admit("{}", [])


def test_expired_code(host: PairingHost) -> None:
    code = host.invite(1000, T)
    joiner = JoinerSession(code, DeviceKeys.generate(), name="phone")
    with pytest.raises(CodeExpiredError) as caught:
        host.accept(joiner.start(), T + 1000)
    # the shell tells the joiner, which reports the same error
    with pytest.raises(CodeExpiredError, match="ask for a new one"):
        joiner.receive(abort_message(caught.value))


def test_a_used_or_cancelled_code_is_refused(
    inviter: Node, host: PairingHost, tmp_path: Path
) -> None:
    code = host.invite(TTL, T)
    keys = DeviceKeys.generate()
    a = _handshake(host, code, keys, now=T + 1)
    admit_device(inviter, a.session.receive(a.m3, T + 2))
    a.session.admit(genesis_json(inviter.genesis), member_records(inviter))
    again = JoinerSession(code, DeviceKeys.generate(), name="thief")
    with pytest.raises(CodeExpiredError):
        host.accept(again.start(), T + 3)
    cancelled = host.invite(TTL, T)
    host.cancel(cancelled.nameplate)
    with pytest.raises(CodeExpiredError):
        host.accept(JoinerSession(cancelled, keys, name="x").start(), T + 4)


def test_a_dropped_attempt_still_burns_the_code(host: PairingHost) -> None:
    code = host.invite(TTL, T)
    first = JoinerSession(code, DeviceKeys.generate(), name="phone")
    host.accept(first.start(), T + 1)  # the connection drops after message 2
    second = JoinerSession(code, DeviceKeys.generate(), name="phone")
    with pytest.raises(CodeExpiredError):
        host.accept(second.start(), T + 2)


def test_rate_limit_six_attempts_in_a_minute(host: PairingHost) -> None:
    code = host.invite(10 * TTL, T)
    for i in range(5):
        unknown = PairingCode(999 if code.nameplate != 999 else 998, code.words)
        stranger = JoinerSession(unknown, DeviceKeys.generate(), name="x")
        with pytest.raises(CodeExpiredError):
            host.accept(stranger.start(), T + i * 1000)
    joiner = JoinerSession(code, DeviceKeys.generate(), name="phone")
    first = joiner.start()
    with pytest.raises(RateLimitedError, match="try again in 55 s"):
        host.accept(first, T + 5000)
    with pytest.raises(RateLimitedError):
        host.accept(b"garbage", T + 59_999)
    # the refused attempt did not burn the code; a minute after the first attempt, it works
    session, m2 = host.accept(first, T + 60_000)
    m3 = joiner.receive(m2)
    assert m3 is not None and session.receive(m3, T + 60_001).name == "phone"


def test_slow_joiner_times_out(host: PairingHost) -> None:
    code = host.invite(TTL, T)
    a = _handshake(host, code, now=T)
    with pytest.raises(PairingError, match="too long"):
        a.session.receive(a.m3, T + 120_001)


# -- garbage, truncation and tampering -------------------------------------------------


def _variants(valid: bytes) -> list[bytes]:
    msg = json.loads(valid)
    extra = {**msg, "x": 1}
    wrong_version = {**msg, "v": 2}
    wrong_type = {**msg, "t": "nope"}
    listed = {k: ([v] if k not in ("v", "t") else v) for k, v in msg.items()}
    short_hex = {
        k: (v[:-2] if isinstance(v, str) and k not in ("t",) else v) for k, v in msg.items()
    }
    return [
        b"",
        b"\x00\xff garbage",
        valid[: len(valid) // 2],
        valid[:-1],
        b"[]",
        b"null",
        b"[" * 5000 + b"]" * 5000,
        b" " * (MAX_HANDSHAKE_BYTES + 1),
        json.dumps(extra).encode(),
        json.dumps(wrong_version).encode(),
        json.dumps(wrong_type).encode(),
        json.dumps(listed).encode(),
        json.dumps(short_hex).encode(),
        json.dumps({"v": 1, "t": "abort", "error": "<script>"}).encode(),
    ]


def test_garbage_first_message() -> None:
    lenient = PairingHost(attempts_per_minute=10_000)
    code = lenient.invite(TTL, T)
    valid = JoinerSession(code, DeviceKeys.generate(), name="p").start()
    msg = json.loads(valid)
    specials = [
        json.dumps({**msg, "nameplate": True}).encode(),
        json.dumps({**msg, "nameplate": 0}).encode(),
        json.dumps({**msg, "nameplate": 1000}).encode(),
        json.dumps({**msg, "msg": "42" + msg["msg"][2:]}).encode(),  # side B from a joiner
    ]
    for bad in [*_variants(valid), *specials]:
        with pytest.raises(PairingError):
            lenient.accept(bad, T)
    assert [i.code for i in lenient.open_invitations(T)] == [code]
    # an invalid group element burns the code but fails cleanly
    not_a_point = json.dumps({**msg, "msg": "41" + "ff" * 32}).encode()
    with pytest.raises(PairingError) as caught:
        lenient.accept(not_a_point, T)
    assert type(caught.value) is PairingError
    assert lenient.open_invitations(T) == []


def test_garbage_second_message() -> None:
    lenient = PairingHost(attempts_per_minute=10_000)
    code = lenient.invite(TTL, T)
    _, valid = lenient.accept(JoinerSession(code, DeviceKeys.generate(), name="p").start(), T)
    msg = json.loads(valid)
    specials = [json.dumps({**msg, "msg": "41" + msg["msg"][2:]}).encode()]  # wrong side
    for bad in [*_variants(valid), *specials]:
        joiner = JoinerSession(code, DeviceKeys.generate(), name="phone")
        joiner.start()
        with pytest.raises(PairingError):
            joiner.receive(bad)
        assert joiner.state == "failed"
        with pytest.raises(PairingError, match="already failed"):
            joiner.receive(valid)


def test_garbage_third_message(inviter: Node) -> None:
    lenient = PairingHost(attempts_per_minute=10_000)
    template = _handshake(lenient, lenient.invite(TTL, T))
    for bad in _variants(template.m3):
        a = _handshake(lenient, lenient.invite(TTL, T))
        with pytest.raises(PairingError):
            a.session.receive(bad, T)
        assert a.session.state == "failed"
    assert _device_count(inviter) == 1


def test_garbage_fourth_message(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    code = host.invite(TTL, T)
    template = _handshake(host, code)
    template.session.receive(template.m3, T)
    valid = template.session.refuse("just a template")
    lenient = PairingHost(attempts_per_minute=10_000)
    for bad in _variants(valid):
        a = _handshake(lenient, lenient.invite(TTL, T))
        a.session.receive(a.m3, T)
        with pytest.raises(PairingError):
            a.joiner.receive(bad)
        assert a.joiner.state == "failed"
        with pytest.raises(PairingError):
            _ = a.joiner.result
    assert _device_count(inviter) == 1
    assert not (tmp_path / "phone").exists()


def _tamper(message: bytes) -> bytes:
    msg = json.loads(message)
    raw = bytearray(base64.b64decode(msg["sealed"]))
    raw[-1] ^= 0x01
    msg["sealed"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(msg).encode()


def test_tampered_sealed_messages(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    a = _handshake(host, host.invite(TTL, T))
    with pytest.raises(PairingError, match="tampered"):
        a.session.receive(_tamper(a.m3), T)

    b = _handshake(host, host.invite(TTL, T))
    request = b.session.receive(b.m3, T)
    admit_device(inviter, request)
    m4 = b.session.admit(genesis_json(inviter.genesis), member_records(inviter))
    with pytest.raises(PairingError, match="tampered"):
        b.joiner.receive(_tamper(m4))
    assert not (tmp_path / "phone").exists()


@hsettings(max_examples=40)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_pairing_errors(data: bytes) -> None:
    host = PairingHost(attempts_per_minute=10_000)
    code = host.invite(TTL, T)
    with pytest.raises(PairingError):
        host.accept(data, T)
    joiner = JoinerSession(code, DeviceKeys.generate(), name="p")
    joiner.start()
    with pytest.raises(PairingError):
        joiner.receive(data)


def test_refusal_and_steps_out_of_order(host: PairingHost) -> None:
    a = _handshake(host, host.invite(TTL, T))
    with pytest.raises(PairingError, match="out of order"):
        a.session.admit("{}", [])
    a.session.receive(a.m3, T)
    with pytest.raises(PairingError, match="refused: not") as caught:
        a.joiner.receive(a.session.refuse("not\x1b[31m today"))
    assert "\x1b" not in caught.value.message  # no terminal escapes from the other side
    with pytest.raises(PairingError, match="already finished"):
        a.session.refuse("again")
    fresh = JoinerSession(PairingCode(1, ("acorn", "apple")), DeviceKeys.generate(), name="p")
    with pytest.raises(PairingError, match="out of order"):
        fresh.receive(b"{}")
    fresh.start()
    with pytest.raises(PairingError, match="out of order"):
        fresh.start()


def test_joiner_rejects_a_welcome_that_does_not_admit_it(inviter: Node, host: PairingHost) -> None:
    a = _handshake(host, host.invite(TTL, T))
    a.session.receive(a.m3, T)
    with pytest.raises(PairingError, match="did not admit"):
        a.joiner.receive(a.session.admit(genesis_json(inviter.genesis), []))

    b = _handshake(host, host.invite(TTL, T))
    record = admit_device(inviter, b.session.receive(b.m3, T))
    forged = json.loads(record_json(record))
    forged["role"] = "authority"
    with pytest.raises(PairingError, match="invalid signature"):
        b.joiner.receive(b.session.admit(genesis_json(inviter.genesis), [json.dumps(forged)]))

    c = _handshake(host, host.invite(TTL, T))
    c.session.receive(c.m3, T)
    with pytest.raises(PairingError, match="invalid mind"):
        c.joiner.receive(c.session.admit("{not json", []))


def test_joined_home_is_not_overwritten(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    a = _handshake(host, host.invite(TTL, T))
    admit_device(inviter, a.session.receive(a.m3, T))
    a.joiner.receive(a.session.admit(genesis_json(inviter.genesis), member_records(inviter)))
    with pytest.raises(HomeError, match="already holds"):
        create_joined_home(inviter.settings, a.joiner.keys, a.joiner.result)
    # a result naming another device is refused before anything is written
    with pytest.raises(PairingError):
        create_joined_home(_settings(tmp_path / "x"), DeviceKeys.generate(), a.joiner.result)
    assert not (tmp_path / "x").exists()


# -- membership records ----------------------------------------------------------------


def _record(signer: DeviceKeys, mind: str, **overrides: object) -> MembershipRecord:
    device = DeviceKeys.generate()
    fields: dict[str, object] = {
        "mind": mind,
        "action": "add",
        "device": device.device_id,
        "sign_key": device.sign_public,
        "box_key": device.box_public,
        "role": "member",
        "person": "p-abcdefgh",
        "name": "phone",
        "created": T,
    }
    fields.update(overrides)
    return sign_membership(signer, **fields)  # type: ignore[arg-type]


def test_record_round_trip_and_shape(inviter: Node) -> None:
    record = _record(inviter.keys, inviter.mind_id)
    text = record_json(record)
    assert parse_membership(text) == record and parse_membership(text.encode()) == record
    raw = json.loads(text)
    assert raw["kind"] == "membership" and raw["by"] == inviter.device_id
    assert list(raw) == sorted(raw)  # canonical
    for bad in ["[]", "{", json.dumps({**raw, "x": 1}), json.dumps({**raw, "created": "1"})]:
        with pytest.raises(MalformedBlockError):
            parse_membership(bad)
    for key, value in [
        ("action", "promote"),
        ("role", "owner"),
        ("person", "bob"),
        ("sign_key", "ab"),
        ("sig", "zz"),
        ("name", ""),
        ("name", "a\nb"),
        ("device", "nope"),
        ("created", True),
        ("mind", "mind-x"),
    ]:
        with pytest.raises(MalformedBlockError):
            parse_membership(json.dumps({**raw, key: value}))
    with pytest.raises(UnknownFormatError):
        parse_membership(json.dumps({**raw, "v": 2}))
    with pytest.raises(MalformedBlockError):
        parse_membership("x" * 5000)
    with pytest.raises(MalformedBlockError):
        _record(inviter.keys, inviter.mind_id, role="owner")


def test_membership_verification(inviter: Node, tmp_path: Path) -> None:
    lookup = store_authority_key(inviter.store)
    good = _record(inviter.keys, inviter.mind_id)
    verify_membership(good, mind_id=inviter.mind_id, authority_key=lookup)
    # forged: a field changed after signing, or another key's signature
    with pytest.raises(BadSignatureError):
        verify_membership(replace(good, name="tv"), mind_id=inviter.mind_id, authority_key=lookup)
    stranger = DeviceKeys.generate()
    impostor = replace(_record(stranger, inviter.mind_id), by=inviter.device_id)
    with pytest.raises(BadSignatureError):
        verify_membership(impostor, mind_id=inviter.mind_id, authority_key=lookup)
    # signed by a device that is not an authority
    with pytest.raises(NotMemberError, match="not an authority"):
        apply_membership(inviter.store, _record(stranger, inviter.mind_id))
    # for another mind
    other = Node.init(_settings(tmp_path / "other"), mind_name="Other", device_name="x")
    with other, pytest.raises(NotMemberError, match="not for"):
        apply_membership(other.store, good)
    # a device id that is not the fingerprint of its key
    lying = _record(inviter.keys, inviter.mind_id, device=stranger.device_id)
    with pytest.raises(IdMismatchError):
        apply_membership(inviter.store, lying)
    assert _device_count(inviter) == 1
    assert apply_membership(inviter.store, good) is True
    assert apply_membership(inviter.store, good) is False


def test_a_member_cannot_admit_or_revoke(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    _join(inviter, host, tmp_path / "phone")
    with Node.open(_settings(tmp_path / "phone")) as phone:
        other = host.invite(TTL, T + 50)
        a = _handshake(host, other, now=T + 51)
        with pytest.raises(InputError, match="only an authority"):
            admit_device(phone, a.session.receive(a.m3, T + 52))
        with pytest.raises(InputError, match="only an authority"):
            revoke_device(phone, inviter.device_id)
        # and its signature does not count on the inviter
        record = _record(phone.keys, inviter.mind_id)
        with pytest.raises(NotMemberError):
            apply_membership(inviter.store, record)


def test_revoke_then_apply(inviter: Node, host: PairingHost, tmp_path: Path) -> None:
    keys, _ = _join(inviter, host, tmp_path / "phone")
    row = inviter.store.device(keys.device_id)
    assert row is not None
    added = parse_membership(row.record)
    with pytest.raises(InputError, match="cannot revoke itself"):
        revoke_device(inviter, inviter.device_id)
    with pytest.raises(NotFoundError):
        revoke_device(inviter, "zzzz")
    revocation = revoke_device(inviter, keys.device_id[:6])
    assert revocation.action == "revoke" and revocation.device == keys.device_id
    row = inviter.store.device(keys.device_id)
    assert row is not None and not row.active and row.revoked == revocation.created
    with pytest.raises(InputError, match="already revoked"):
        revoke_device(inviter, keys.device_id)
    # the old add record does not bring it back; the revocation is idempotent
    assert apply_membership(inviter.store, added) is False
    assert apply_membership(inviter.store, revocation) is False
    row = inviter.store.device(keys.device_id)
    assert row is not None and not row.active
    records = member_records(inviter)
    assert records == [record_json(added), record_json(revocation)]
    # a revoked device cannot pair again with the same keys
    a = _handshake(host, host.invite(TTL, T + 100), keys, now=T + 101)
    with pytest.raises(InputError, match="revoked"):
        admit_device(inviter, a.session.receive(a.m3, T + 102))
    # a welcome listing this device as revoked is refused by the joiner
    with pytest.raises(PairingError, match="revoked"):
        a.joiner.receive(a.session.admit(genesis_json(inviter.genesis), records))


def test_revocation_arriving_before_the_add(inviter: Node) -> None:
    added = _record(inviter.keys, inviter.mind_id, created=T)
    fields = {k: getattr(added, k) for k in ("mind", "device", "sign_key", "box_key", "role")}
    revoked = sign_membership(
        inviter.keys, **fields, action="revoke", person=added.person, name=added.name, created=T + 1
    )
    assert apply_membership(inviter.store, revoked) is True
    assert apply_membership(inviter.store, added) is False
    row = inviter.store.device(added.device)
    assert row is not None and not row.active
    assert replay_membership(inviter.genesis, [revoked, added]) == [added, revoked]


def test_member_records_leave_out_the_genesis(inviter: Node) -> None:
    assert member_records(inviter) == []


# -- codes -----------------------------------------------------------------------------


def test_word_list() -> None:
    assert len(WORDS) == 256 == len(set(WORDS))
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 7 for w in WORDS)

    def distance(a: str, b: str) -> int:
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    assert all(distance(a, b) >= 2 for a, b in itertools.combinations(WORDS, 2))


@pytest.mark.parametrize(
    "text",
    ["7-crane-orbit", "7 crane orbit", " 7 - Crane - ORBIT ", "007_crane.orbit", "7-crane-orbit\n"],
)
def test_parse_code_is_tolerant(text: str) -> None:
    code = parse_code(text)
    assert code == PairingCode(7, ("crane", "orbit")) and str(code) == "7-crane-orbit"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7-crain-orbit", "did you mean 'crane'"),
        ("7-crane-orbitt", "did you mean 'orbit'"),
        ("7-crane-qqqqq", "check the code"),
        ("7-crane", "got 2 parts"),
        ("", "got 0 parts"),
        ("crane-orbit-7", "starts with a number"),
        ("0-crane-orbit", "starts with a number"),
        ("1000-crane-orbit", "starts with a number"),
        ("9" * 5000 + "-crane-orbit", "starts with a number"),
        ("٣-crane-orbit", "starts with a number"),
    ],
)
def test_parse_code_explains_typos(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_code(text)


def test_new_code() -> None:
    assert new_code(random.Random(3)) == new_code(random.Random(3))
    code = new_code()
    assert 1 <= code.nameplate <= 999 and parse_code(str(code)) == code
    assert new_code(nameplate=5).nameplate == 5
    with pytest.raises(InputError):
        PairingCode(0, ("crane", "orbit"))
    with pytest.raises(InputError):
        PairingCode(1, ("crane", "dog"))
    with pytest.raises(InputError):
        JoinerSession(code, DeviceKeys.generate(), name="")
