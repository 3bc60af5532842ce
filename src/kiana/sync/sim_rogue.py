"""What a malicious member of a simulated mind sends: forged, foreign and garbage input.

``attack(rng, ...)`` returns one ``(channel, body)`` message and records, in ``Forged``,
the ids and hashes no honest device may ever store. The rogue device is a real member
(its messenger envelopes open), so everything here reaches the cores.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace

from kiana.blocks import Block, make_block, make_tombstone
from kiana.identity.keys import DeviceKeys
from kiana.identity.mind import Genesis
from kiana.ledger import Ledger, LedgerBlock, commit_record, merkle_root
from kiana.sync.crdt import Op, encode_ops, sign_op
from kiana.sync.crdt_wire import op_hash
from kiana.sync.sim_mind import device_keys
from kiana.sync.sim_writes import REGISTERS

KINDS = (
    "tampered_block",
    "stranger_block",
    "stolen_author",
    "foreign_tombstone",
    "garbage",
    "ledger_non_authority",
    "ledger_forged_seal",
    "bad_records",
    "forged_op",
    "bad_signature_op",
    "equivocating_op",
)


@dataclass
class Forged:
    records: set[str] = field(default_factory=set)  # block / tombstone ids never to be stored
    ledger: set[str] = field(default_factory=set)  # ledger block hashes never to be accepted
    ops: set[str] = field(default_factory=set)  # signatures (hex) of CRDT ops never to apply
    sent: dict[str, int] = field(default_factory=dict)  # attacks sent, by kind
    rogue_seq: int = 0  # the last seq of the rogue's own (equivocated) ops
    twin: tuple[Op, Op] | None = None  # an equivocation: (sent, to send with the next attack)
    kept: dict[tuple[str, int], str] = field(default_factory=dict)  # dot -> winner's sig (hex)


def _line(kind: str, record: dict[str, object]) -> bytes:
    return json.dumps({"type": kind, "record": record}, separators=(",", ":")).encode()


def _ledger_block(
    keys: DeviceKeys, signer: str, ledger: Ledger, now: int, rng: random.Random
) -> LedgerBlock:
    head = ledger.head
    records = (commit_record(rng.randbytes(32).hex()),)
    draft = LedgerBlock(
        height=head.height + 1,
        parent=head.hash,
        time=max(now, head.time + 1),
        signer=signer,
        records=records,
        merkle=merkle_root([r.id for r in records]),
        difficulty=2,
        checkpoint=(),
    )
    sig = keys.signing.sign(draft.signed_message()).signature.hex()
    return replace(draft, sig=sig)


def attack(
    rng: random.Random,
    *,
    keys: DeviceKeys,
    genesis: Genesis,
    ledger: Ledger,
    victim_blocks: list[Block],
    honest: list[str],
    now: int,
    forged: Forged,
    kinds: tuple[str, ...] = KINDS,
) -> tuple[str, bytes] | None:
    """One malicious message (channel, body), or None if this kind has nothing to use."""
    if forged.twin is not None:  # to whichever peer the driver picked this time
        twins, forged.twin = forged.twin, None
        forged.kept[twins[0].dot] = min(twins, key=op_hash).sig.hex()
        return ("state", b"O" + encode_ops([twins[1]]))
    kind = rng.choice(kinds)
    me = keys.device_id
    out: tuple[str, bytes] | None = None
    if kind == "tampered_block" and victim_blocks:
        d = rng.choice(victim_blocks).to_dict() | {"body": f"tampered {rng.random()}"}
        out = ("sync", b"B" + _line("block", d))
    elif kind == "stranger_block":
        stranger = device_keys(1000 + rng.randrange(3))
        b = make_block(stranger.signing, stranger.device_id, kind="fact", body="x", created=now)
        forged.records.add(b.id)
        out = ("sync", b"B" + _line("block", b.to_dict()))
    elif kind == "stolen_author":
        b = make_block(
            keys.signing, rng.choice(honest), kind="fact", body=f"lie {now}", created=now
        )
        forged.records.add(b.id)
        out = ("sync", b"B" + _line("block", b.to_dict()))
    elif kind == "foreign_tombstone" and victim_blocks:
        t = make_tombstone(keys.signing, me, erases=rng.choice(victim_blocks).id, created=now)
        forged.records.add(t.id)
        out = ("sync", b"B" + _line("tombstone", t.to_dict()))
    elif kind == "garbage":
        channel = rng.choice(("sync", "state", "ledger"))
        body = rng.choice(
            (
                rng.randbytes(rng.randrange(0, 80)),
                b"B{not json",
                b"R" + rng.randbytes(20),
                b"W" + rng.randbytes(33),
                b'O{"v":1,"replicas":["x"],"ops":[[5,1,1,"set","k",1]]}',
                b"V[1,2]",
                b'{"t":"head","hash":"zz","td":-1}',
                b'{"t":"blocks","blocks":[{"height":1}]}',
                b'{"t":"get","hash":7}',
            )
        )
        out = (channel, body)
    elif kind in ("ledger_non_authority", "ledger_forged_seal"):
        signer = me if kind == "ledger_non_authority" else genesis.device
        block = _ledger_block(keys, signer, ledger, now, rng)
        forged.ledger.add(block.hash)
        body = json.dumps({"t": "blocks", "blocks": [block.to_dict()]}).encode()
        out = ("ledger", body)
    elif kind == "bad_records":
        body = json.dumps(
            {"t": "records", "records": [{"v": 1, "kind": "vote"}, {"v": 1, "kind": "commit"}, 3]}
        ).encode()
        out = ("ledger", body)
    elif kind in ("forged_op", "bad_signature_op"):
        # forged_op: under an honest device's id, signed with the rogue's own key;
        # bad_signature_op: under the rogue's id (its next seq), with random signature bytes.
        replica = rng.choice(honest) if kind == "forged_op" else me
        draft = Op(
            replica,
            rng.randint(1, 40) if kind == "forged_op" else 1,
            rng.randint(1, 500),
            "set",
            rng.choice(REGISTERS),
            f"forged {now}",
        )
        if kind == "forged_op":
            op = sign_op(keys.signing, draft)
        else:
            op = Op(
                draft.replica,
                draft.seq,
                draft.lamport,
                "set",
                draft.key,
                draft.value,
                (),
                rng.randbytes(64),
            )
        forged.ops.add(op.sig.hex())
        out = ("state", b"O" + encode_ops([op]))
    elif kind == "equivocating_op":
        # Two different ops, both validly signed, for the rogue's next dot: one now, the
        # other with the next attack (to another peer, as the driver picks). Honest
        # devices must all keep the same one (sim_checks: identical CRDT state).
        forged.rogue_seq += 1
        key, lamport = rng.choice(REGISTERS), rng.randint(1, 500)
        first, second = (
            sign_op(keys.signing, Op(me, forged.rogue_seq, lamport, "set", key, f"twin {i} {now}"))
            for i in range(2)
        )
        forged.twin = (first, second)
        out = ("state", b"O" + encode_ops([first]))
    if out is not None:
        forged.sent[kind] = forged.sent.get(kind, 0) + 1
    return out


__all__ = ["KINDS", "Forged", "attack"]
