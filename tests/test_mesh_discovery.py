"""mDNS discovery (``kiana.mesh.discovery``) and the namespace test networks (``netns``).

The unit tests build the advertisement without opening a socket. The
``netns`` tests run real discovery nodes (``mesh_discovery_child.py``) in
network namespaces on a private bridge, so multicast never reaches the root
namespace, and smoke-test the NAT topology and coturn that later tests use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kiana.identity import DeviceKeys
from kiana.identity.mind import make_genesis, new_person_id
from kiana.mesh.discovery import (
    SERVICE_TYPE,
    Discovery,
    PeerSeen,
    mind_tag,
    nameplate_hash,
    txt_properties,
)
from netns import Lan, NatTopology, start_coturn, start_echo, stun_binding, tcp_probe

CHILD = str(Path(__file__).with_name("mesh_discovery_child.py"))


# -- unit ----------------------------------------------------------------------------


def test_mind_tag_is_an_hmac_of_the_mind_id() -> None:
    mind = "mind-abcdefghijklmnop"
    expected = hmac.new(mind.encode(), b"kiana-mdns-tag-v1", hashlib.sha256).hexdigest()[:16]
    assert mind_tag(mind) == expected
    assert len(mind_tag(mind)) == 16 and int(mind_tag(mind), 16) >= 0
    assert mind_tag(mind) == mind_tag(mind)
    assert mind_tag(mind) != mind_tag("mind-abcdefghijklmnoq")
    assert "abcdefgh" not in mind_tag(mind)


def test_nameplate_hash_hides_the_nameplate() -> None:
    hashes = {nameplate_hash(n) for n in range(1, 1000)}
    assert len(hashes) == 999
    assert all(len(h) == 16 for h in hashes)
    assert nameplate_hash(7) != "7" and "7" not in txt_properties("t", "d", nameplate_hash(7))


def test_advertisement_names_neither_mind_nor_owner() -> None:
    keys = DeviceKeys.generate()
    genesis = make_genesis(
        keys,
        name="Annabelle's second brain",
        device_name="Annabelle's laptop",
        created=1_764_000_000_000,
        person=new_person_id(),
    )
    seen: list[PeerSeen] = []
    discovery = Discovery(
        mind_id=genesis.mind_id,
        device_id=keys.device_id,
        port=7475,
        on_peer=seen.append,
        addresses=["10.77.0.1"],
    )
    info = discovery._service_info()  # built without touching the network
    assert info.type == SERVICE_TYPE
    assert info.name == f"{keys.device_id}.{SERVICE_TYPE}"
    assert info.port == 7475
    assert info.parsed_addresses() == ["10.77.0.1"]
    assert info.decoded_properties == {
        "v": "1",
        "m": mind_tag(genesis.mind_id),
        "d": keys.device_id,
    }
    records = info.text + info.name.encode() + (info.server or "").encode()
    for secret in ("Annabelle", "brain", "laptop", genesis.mind_id, genesis.person):
        assert secret.encode() not in records
    assert seen == []


def test_pairing_advert_adds_only_the_hash() -> None:
    assert txt_properties("0123456789abcdef", "dev", nameplate_hash(42)) == {
        "v": "1",
        "m": "0123456789abcdef",
        "d": "dev",
        "pair": nameplate_hash(42),
    }


# -- discovery between namespaces ------------------------------------------------------


def events(proc: subprocess.Popen[str], timeout: float = 30) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.netns
@pytest.mark.slow
def test_devices_of_one_mind_find_each_other_and_no_one_else() -> None:
    minds = ["mind-aaaaaaaaaaaaaaaa"] * 3 + ["mind-bbbbbbbbbbbbbbbb"]
    devices = [f"dev{i}-{DeviceKeys.generate().device_id}" for i in range(4)]
    with Lan(5) as lan:
        hosts = lan.hosts
        nodes = []
        for i, mind in enumerate(minds):
            argv = [sys.executable, CHILD, "node", "--mind", mind, "--device", devices[i]]
            argv += ["--port", str(7000 + i), "--duration", "4"]
            if i == 0:
                argv += ["--pairing", "7"]
            nodes.append(lan.run(hosts[i], argv))
        time.sleep(0.5)
        # a joiner (no mind yet) on the fifth host finds the inviter by its nameplate
        finder = lan.run(
            hosts[4], [sys.executable, CHILD, "find", "--nameplate", "7", "--timeout", "3"]
        )
        missing = lan.run(
            hosts[4], [sys.executable, CHILD, "find", "--nameplate", "8", "--timeout", "1"]
        )
        logs = [events(node) for node in nodes]
        found = events(finder)
        not_found = events(missing)
        addresses = [lan.address(h) for h in hosts]

    assert found[-1]["host"] == [addresses[0], 7000]
    assert not_found[-1]["host"] is None
    for i, log in enumerate(logs):
        kinds = [e["event"] for e in log]
        assert kinds[:2] == ["starting", "started"] and kinds[-1] == "closed"
        started = log[0]["t"]
        peers = [e for e in log if e["event"] == "peer"]
        if i == 3:
            assert peers == [], "a device of another mind saw this mind's devices"
            continue
        first_seen: dict[str, dict[str, Any]] = {}
        for e in peers:
            first_seen.setdefault(e["device"], e)
        assert set(first_seen) == {devices[j] for j in range(3) if j != i}
        for j in range(3):
            if j != i:
                peer = first_seen[devices[j]]
                assert peer["addresses"] == [addresses[j]] and peer["port"] == 7000 + j
                assert peer["t"] - started < 3.0, "seen too late"
        # the inviter's advertisement carries the pairing flag once it is set, and keeps it
        if i != 0:
            flags = [e["pairing"] for e in peers if e["device"] == devices[0]]
            assert flags[-1] is True and flags == sorted(flags)


# -- the NAT topology and coturn --------------------------------------------------------

TURN_CLIENT = r"""
import asyncio, json, sys
from aioice.turn import create_turn_endpoint

server, user, password, peer_host, peer_port = sys.argv[1:6]

class Echo(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = asyncio.get_running_loop().create_future()
    def datagram_received(self, data, addr):
        if not self.got.done():
            self.got.set_result((data.decode(), addr))

async def main():
    transport, proto = await asyncio.wait_for(
        create_turn_endpoint(Echo, (server, 3478), user, password), 10)
    relayed = transport.get_extra_info("sockname")
    for _ in range(20):
        transport.sendto(b"via-turn", (peer_host, int(peer_port)))
        try:
            data, addr = await asyncio.wait_for(asyncio.shield(proto.got), 0.5)
            break
        except asyncio.TimeoutError:
            continue
    else:
        data, addr = None, None
    transport.close()
    await asyncio.sleep(0.1)
    print(json.dumps({"relayed": list(relayed), "data": data, "from": addr and list(addr)}))

asyncio.run(main())
"""


@pytest.mark.netns
@pytest.mark.slow
def test_nat_topology_and_coturn() -> None:
    with NatTopology(public=("server", "peer")) as nat:
        server = nat.address("server")
        start_echo(nat, "server", 7000)
        start_echo(nat, "b", 7001)
        start_echo(nat, "peer", 7002, udp=True)
        # out through the NAT to the public side: fine
        assert tcp_probe(nat, "a", server, 7000) == {"ok": "ping"}
        assert tcp_probe(nat, "b", server, 7000) == {"ok": "ping"}
        # into the other private LAN: neither its private address (routed, but the
        # router drops NEW from its WAN) nor its router's public address
        assert "error" in tcp_probe(nat, "a", nat.address("b"), 7001, timeout=1.0)
        assert "error" in tcp_probe(nat, "a", nat.wan["b"], 7001, timeout=1.0)
        assert "error" in tcp_probe(nat, "server", nat.address("b"), 7001, timeout=1.0)

        with start_coturn(nat, "server", user="kiana", password="s3cret", realm="kiana.test"):
            mapped = stun_binding(nat, "a", server)
            assert mapped is not None and mapped[0] == nat.wan["a"]  # the NAT's public address
            mapped = stun_binding(nat, "b", server)
            assert mapped is not None and mapped[0] == nat.wan["b"]
            # a relayed datagram from behind NAT A to a public peer and back
            argv = [sys.executable, "-c", TURN_CLIENT, server, "kiana", "s3cret"]
            proc = nat.check("a", [*argv, nat.address("peer"), "7002"], timeout=60)
            assert proc.returncode == 0, proc.stderr
            relay = json.loads(proc.stdout)
            assert relay["relayed"][0] == server and 49160 <= relay["relayed"][1] <= 49200
            assert relay["data"] == "via-turn"
            assert relay["from"] == [nat.address("peer"), 7002]


# -- addresses that change while a device runs --------------------------------------------


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines ``proc`` prints, read by a thread so a test can wait with a timeout."""
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_a_device_re_announces_when_its_addresses_change() -> None:
    mind = "mind-cccccccccccccccc"
    mover, watcher = (f"dev{i}-{DeviceKeys.generate().device_id}" for i in range(2))
    new_address = "10.77.0.101"
    with Lan(2) as lan:
        a, b = lan.hosts
        old_address = lan.address(a)
        # deleting the primary address must keep the secondary one (not the default)
        lan.sysctl(lan.ns(a), "net.ipv4.conf.eth0.promote_secondaries", "1")
        base = [sys.executable, CHILD, "node", "--mind", mind, "--duration", "20"]
        moving = lan.run(a, [*base, "--device", mover, "--address-check", "0.3"])
        seeing = lan.run(b, [*base, "--device", watcher, "--port", "7001"])
        lines = _lines(seeing)
        reports: list[list[str]] = []

        def wait_for(addresses: list[str], timeout: float) -> float:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = json.loads(lines.get(timeout=left))
                except queue.Empty:
                    break
                if event["event"] == "peer" and event["device"] == mover:
                    reports.append(event["addresses"])
                    if sorted(event["addresses"]) == sorted(addresses):
                        return time.monotonic()
            raise AssertionError(f"no report of {addresses} within {timeout} s: {reports}")

        wait_for([old_address], 5)
        added = time.monotonic()
        lan.sh(lan.ip, "-n", lan.ns(a), "addr", "add", f"{new_address}/24", "dev", "eth0")
        seen_new = wait_for([old_address, new_address], 5) - added
        # the old address goes: peers drop it (zeroconf's socket on it is gone: reopened)
        removed = time.monotonic()
        lan.sh(lan.ip, "-n", lan.ns(a), "addr", "del", f"{old_address}/24", "dev", "eth0")
        seen_gone = wait_for([new_address], 5) - removed
        moving.terminate()
        _, moving_err = moving.communicate(timeout=10)
        assert moving.returncode == 0 and "Traceback" not in moving_err, moving_err
    # within a few check intervals (0.3 s), the wire and the 1 s cache flush for a removal
    assert seen_new < 2.0 and seen_gone < 3.0, (seen_new, seen_gone, reports)


def test_every_open_invitation_is_listed_and_closed_alone() -> None:
    props = txt_properties("t", "d", [nameplate_hash(7), nameplate_hash(8)])
    assert props["pair"] == f"{nameplate_hash(7)},{nameplate_hash(8)}"
    many = txt_properties("t", "d", [nameplate_hash(n) for n in range(1, 30)])
    assert len(f"pair={many['pair']}") <= 255


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_two_open_invitations_are_both_found_and_closed_one_by_one() -> None:
    device = f"dev0-{DeviceKeys.generate().device_id}"
    with Lan(2) as lan:
        host, joiner = lan.hosts
        argv = [sys.executable, CHILD, "node", "--mind", "mind-dddddddddddddddd"]
        argv += ["--device", device, "--duration", "8", "--pairing", "7", "--pairing", "8"]
        node = lan.run(host, [*argv, "--drop-pairing", "7", "--drop-after", "2.5"])
        time.sleep(0.5)
        find = [sys.executable, CHILD, "find", "--timeout", "1.5", "--nameplate"]
        both = [lan.run(joiner, [*find, str(n)]) for n in (7, 8)]
        first = [events(p)[-1]["host"] for p in both]
        lines = _lines(node)
        while json.loads(lines.get(timeout=10))["event"] != "dropped":
            pass  # the node drops nameplate 7 at 2.5 s
        after = [lan.run(joiner, [*find, str(n)]) for n in (7, 8)]
        later = [events(p)[-1]["host"] for p in after]
        address = lan.address(host)
    assert first == [[address, 7475], [address, 7475]]
    assert later == [None, [address, 7475]]
