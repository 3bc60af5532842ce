"""The mesh end to end: real ``kiana`` processes, each device in its own network namespace.

Four hosts on one bridged LAN (``netns.Lan``): ``a`` creates the mind and serves;
``b`` and ``c`` join it with codes from ``kiana pair`` (found by mDNS, ``c`` as a
new person) and serve; ``d`` stays outside and plays the wrong-code joiner and the
sender of garbage. The CLI and the HTTP API are used exactly as a user would, from
inside each device's namespace (the API listens on that namespace's loopback).

The tests share one running mesh (a module fixture) and run in file order: the
destructive ones (kill -9, revocation) come last and leave the mesh as the next
test expects it (or are the last).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.polling import wait_for as until

from helpers_cli import clean_env, kiana_argv
from kiana.mesh.codes import WORDS
from netns import Lan, stop_process

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]

MESH_PORT = 7475
API_PORT = 8765
HEARTBEAT_MS = 300
CLI_TIMEOUT_S = 60.0

T = TypeVar("T")

# A line-oriented HTTP client that runs inside a device's namespace: one JSON request per
# line on stdin ({method, path, body, token}), one JSON answer per line on stdout.
API_AGENT = r"""
import json, sys, urllib.error, urllib.request
base = sys.argv[1]
for line in sys.stdin:
    req = json.loads(line)
    data = None if req.get("body") is None else json.dumps(req["body"]).encode()
    r = urllib.request.Request(base + req["path"], data=data, method=req["method"])
    r.add_header("Content-Type", "application/json")
    if req.get("token"):
        r.add_header("Authorization", "Bearer " + req["token"])
    try:
        with urllib.request.urlopen(r, timeout=req.get("timeout", 10)) as resp:
            out = {"status": resp.status, "body": json.loads(resp.read() or b"null")}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        out = {"status": exc.code, "body": body}
    except (OSError, ValueError) as exc:
        out = {"error": type(exc).__name__ + ": " + str(exc)}
    print(json.dumps(out), flush=True)
"""

# Garbage for a mesh port; every connection must be closed by the node, and one
# connection that stalls inside the preamble must not hold up the others.
GARBAGE = r"""
import json, os, socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])

def outcome(sock, timeout=4.0):
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return "closed"
    except socket.timeout:
        return "still open"
    except ConnectionResetError:
        return "closed"

def attempt(payload, half_close=True):
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return outcome(sock)

stall = socket.create_connection((host, port), timeout=5)
stall.sendall(b"KIANA")  # five of six preamble bytes, then nothing
noise = b"\x00" + os.urandom(4095)
results = {
    "random bytes": attempt(noise),
    "half preamble": attempt(b"KIA"),
    "truncated frame": attempt(b"KIANAL" + struct.pack(">I", 1000) + os.urandom(10)),
    "oversized length": attempt(b"KIANAL" + struct.pack(">I", 0xFFFFFFFF), half_close=False),
    "garbage handshake": attempt(b"KIANAL" + struct.pack(">I", 32) + os.urandom(32)),
    "garbage pairing": attempt(b"KIANAP" + struct.pack(">I", 5) + b"hello", half_close=False),
}
results["stalled preamble"] = outcome(stall, 8.0)  # the node waits 5 s for a preamble
stall.close()
print(json.dumps(results))
"""


@dataclass
class Device:
    host: str
    home: Path
    serve: subprocess.Popen[str] | None = None
    agent: subprocess.Popen[str] | None = None
    device_id: str = ""
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def token(self) -> str:
        return (self.home / "api-token").read_text(encoding="utf-8").strip()


class Mesh:
    """The LAN, the devices' homes and processes, and ways to reach them."""

    def __init__(self, lan: Lan, root: Path) -> None:
        self.lan = lan
        self.root = root
        self.devices = {h: Device(h, root / f"home-{h}") for h in lan.hosts}
        self.joins: dict[str, dict[str, Any]] = {}  # host -> what `kiana join --json` said

    def __getitem__(self, host: str) -> Device:
        return self.devices[host]

    def env(self, dev: Device) -> dict[str, str]:
        return clean_env(
            {
                "KIANA_HOME": str(dev.home),
                "KIANA_MESH_HOST": "0.0.0.0",
                "KIANA_MESH_PORT": str(MESH_PORT),
                "KIANA_MESH_DISCOVERY": "1",
                "KIANA_MESH_HEARTBEAT_MS": str(HEARTBEAT_MS),
                "KIANA_API_PORT": str(API_PORT),
            }
        )

    # -- the command line -------------------------------------------------------------

    def kiana(
        self, dev: Device, *args: object, timeout: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kiana ARGS`` for ``dev`` inside its namespace, to completion."""
        return subprocess.run(
            [*self.lan.exec_prefix(dev.host), *kiana_argv(dev.home, *args)],
            env=self.env(dev),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kiana_json(self, dev: Device, *args: object) -> Any:
        proc = self.kiana(dev, *args, "--json")
        assert proc.returncode == 0, f"kiana {args} on {dev.host}: {proc.stderr}"
        return json.loads(proc.stdout)

    def start_pair(self, dev: Device) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """Start ``kiana pair --json --no-qr`` on ``dev``; the process and its invitation."""
        proc = self.lan.run(
            dev.host, kiana_argv(dev.home, "pair", "--json", "--no-qr"), env=self.env(dev)
        )
        assert proc.stdout is not None
        text = ""
        decoder = json.JSONDecoder()
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            text += line
            try:
                info, _ = decoder.raw_decode(text.strip())
            except ValueError:
                continue
            assert isinstance(info, dict)
            return proc, info
        stop_process(proc)
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"kiana pair printed no invitation: {text!r} {err}")

    # -- kiana serve ------------------------------------------------------------------

    def start_serve(self, dev: Device) -> None:
        dev.starts += 1
        log = self.root / f"serve-{dev.host}-{dev.starts}.log"
        dev.logs.append(log)
        with log.open("w") as out:
            dev.serve = self.lan.run(
                dev.host,
                kiana_argv(dev.home, "serve"),
                env=self.env(dev),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert dev.serve is not None
            if dev.serve.poll() is not None:
                raise AssertionError(f"kiana serve on {dev.host} exited:\n{self.log(dev)}")
            return self.api(dev, "GET", "/healthz", timeout=1).get("status") == 200

        until(healthy, 30, f"kiana serve on {dev.host} to answer")

    def kill9(self, dev: Device) -> None:
        assert dev.serve is not None
        dev.serve.kill()
        dev.serve.wait(10)

    def log(self, dev: Device) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in dev.logs if p.exists()
        )

    # -- the HTTP API, from inside the namespace ---------------------------------------------

    def api(
        self, dev: Device, method: str, path: str, body: Any = None, timeout: float = 10
    ) -> dict[str, Any]:
        """One request to ``dev``'s API: {"status", "body"} or {"error"}."""
        if dev.agent is None or dev.agent.poll() is not None:
            dev.agent = self.lan.run(
                dev.host,
                [sys.executable, "-c", API_AGENT, f"http://127.0.0.1:{API_PORT}"],
                env=clean_env(),
                stdin=subprocess.PIPE,
            )
        assert dev.agent.stdin is not None and dev.agent.stdout is not None
        token = dev.token if (dev.home / "api-token").exists() else None
        request = {"method": method, "path": path, "body": body, "token": token, "timeout": timeout}
        dev.agent.stdin.write(json.dumps(request) + "\n")
        dev.agent.stdin.flush()
        line = dev.agent.stdout.readline()
        if not line:
            raise AssertionError(f"the API agent on {dev.host} died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def get(self, dev: Device, path: str) -> Any:
        answer = self.api(dev, "GET", path)
        assert answer.get("status") == 200, f"GET {path} on {dev.host}: {answer}"
        return answer["body"]

    def send(self, src: Device, dst: Device, channel: str, text: str) -> str:
        body = {"to": dst.device_id, "channel": channel, "text": text}
        answer = self.api(src, "POST", "/api/v1/mesh/messages", body)
        assert answer.get("status") == 202, f"send on {src.host}: {answer}"
        msg_id: str = answer["body"]["id"]
        return msg_id

    def inbox(self, dev: Device, channel: str, *, consume: bool = False) -> list[dict[str, Any]]:
        query = f"?channel={channel}" + ("&consume=true" if consume else "")
        messages: list[dict[str, Any]] = self.get(dev, "/api/v1/mesh/inbox" + query)["messages"]
        return messages

    def members(self, dev: Device) -> list[tuple[Any, ...]]:
        """The mind's devices as ``dev`` records them (no live link state)."""
        keys = ("device_id", "name", "role", "person", "sign_key", "box_key", "revoked")
        devices = self.get(dev, "/api/v1/devices")["devices"]
        return sorted(tuple(d[k] for k in keys) for d in devices)

    def peer_states(self, dev: Device) -> dict[str, str]:
        """device id → health state, as ``dev``'s running node sees it (empty if unreachable)."""
        answer = self.api(dev, "GET", "/api/v1/mesh/peers", timeout=3)
        if answer.get("status") != 200:
            return {}
        return {p["device"]: p["state"] for p in answer["body"]["peers"]}

    def all_up(self, hosts: tuple[str, ...]) -> bool:
        for h in hosts:
            states = self.peer_states(self[h])
            if any(states.get(self[o].device_id) != "up" for o in hosts if o != h):
                return False
        return True

    def wait_all_up(self, hosts: tuple[str, ...], timeout_s: float = 15) -> None:
        def check() -> bool:
            return self.all_up(hosts)

        try:
            until(check, timeout_s, f"links between all of {hosts}")
        except AssertionError as exc:
            views = {h: self.peer_states(self[h]) for h in hosts}
            logs = "\n".join(self.log(self[h]) for h in hosts)
            raise AssertionError(f"{exc}\npeer states: {views}\n{logs}") from None


def wait_delivered(
    mesh: Mesh, dev: Device, channel: str, ids: set[str], timeout_s: float
) -> list[dict[str, Any]]:
    """Poll ``dev``'s inbox on ``channel`` until every id in ``ids`` is there; the inbox."""
    last: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal last
        last = mesh.inbox(dev, channel)
        return ids <= {m["id"] for m in last}

    try:
        until(check, timeout_s, f"{len(ids)} messages on {channel} at {dev.host}")
    except AssertionError as exc:
        missing = len(ids - {m["id"] for m in last})
        raise AssertionError(f"{exc}: {missing} missing\n{mesh.log(dev)}") from None
    return last


def assert_exactly_once(inbox: list[dict[str, Any]], ids: set[str]) -> None:
    counts = collections.Counter(m["id"] for m in inbox)
    duplicates = {i: n for i, n in counts.items() if n > 1}
    assert not duplicates, f"delivered more than once: {duplicates}"
    assert set(counts) == ids, f"unexpected: {set(counts) - ids}, missing: {ids - set(counts)}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A, B, C of one mind, serving and linked; D a bystander with an empty home."""
    root = tmp_path_factory.mktemp("mesh-netns")
    with Lan(names=["a", "b", "c", "d"]) as lan:
        m = Mesh(lan, root)
        a, b, c = m["a"], m["b"], m["c"]
        m.kiana_json(a, "init", "--name", "Family", "--device-name", "a")
        m.start_serve(a)
        a.device_id = m.get(a, "/api/v1/devices")["this_device"]
        for dev, extra in ((b, ()), (c, ("--as-new-person", "Sam"))):
            pair, invite = m.start_pair(a)
            started = time.monotonic()
            joined = m.kiana(dev, "join", invite["code"], "--name", dev.host, *extra, "--json")
            assert joined.returncode == 0, f"join on {dev.host}: {joined.stderr}"
            result = json.loads(joined.stdout)
            dev.device_id = result["device"]
            m.joins[dev.host] = {**result, "join_s": time.monotonic() - started}
            out, err = pair.communicate(timeout=CLI_TIMEOUT_S)
            assert pair.returncode == 0, f"kiana pair on a: {err}"
            assert f'"{dev.device_id}"' in out and '"joined"' in out
            m.start_serve(dev)
        yield m


# -- 1. three devices find and reach each other ---------------------------------------------


def test_three_devices_pair_link_and_message(mesh: Mesh) -> None:
    hosts = ("a", "b", "c")
    joins = mesh.joins
    # both joiners found the inviter by mDNS (no --address): its LAN address
    assert joins["b"]["inviter"] == f"{mesh.lan.address('a')}:{MESH_PORT}"
    assert joins["c"]["inviter"] == f"{mesh.lan.address('a')}:{MESH_PORT}"

    started = time.monotonic()
    mesh.wait_all_up(hosts, timeout_s=10)
    linked_s = time.monotonic() - started

    ids = {h: mesh[h].device_id for h in hosts}
    for h in hosts:
        peers = mesh.kiana_json(mesh[h], "peers")["peers"]
        by_id = {p["device"]: p for p in peers}
        for o in hosts:
            if o == h:
                continue
            p = by_id[ids[o]]
            assert p["state"] == "up", (h, o, p)
            # a direct TCP link to an address on the LAN: B and C only learn each other's
            # address from mDNS (each stored only the inviter's address when it joined)
            assert p["link"] == "direct", (h, o, p)
            assert f"{mesh.lan.address(o)}:{MESH_PORT}" in p["addresses"], (h, o, p)

    persons = {}
    for h in hosts:
        listing = mesh.kiana_json(mesh[h], "devices")
        assert listing["this_device"] == ids[h]
        devices = {d["device_id"]: d for d in listing["devices"]}
        assert set(devices) == set(ids.values()), (h, devices)
        assert devices[ids["a"]]["role"] == "authority"
        assert devices[ids["b"]]["role"] == "member"
        assert devices[ids["c"]]["role"] == "member"
        assert not any(d["revoked"] for d in devices.values())
        persons[h] = {o: devices[ids[o]]["person"] for o in hosts}
    # every device agrees on who is whom: B is A's person's device, C is a new person (Sam)
    assert persons["a"] == persons["b"] == persons["c"]
    assert persons["a"]["b"] == persons["a"]["a"]
    assert persons["a"]["c"] != persons["a"]["a"]
    assert joins["b"]["person"] == persons["a"]["a"]
    assert joins["c"]["person"] == persons["a"]["c"]

    # messages both ways between every pair, each delivered exactly once
    channel = "app.hello"
    sent: dict[str, set[str]] = {h: set() for h in hosts}
    for src in hosts:
        for dst in hosts:
            if src != dst:
                sent[dst].add(mesh.send(mesh[src], mesh[dst], channel, f"{src} to {dst}"))
    for dst in hosts:
        inbox = wait_delivered(mesh, mesh[dst], channel, sent[dst], timeout_s=10)
        senders = {ids[h]: h for h in hosts}
        assert sorted(f"{senders[m['sender']]}>{m['text']}" for m in inbox) == sorted(
            f"{s}>{s} to {dst}" for s in hosts if s != dst
        )
    time.sleep(3 * HEARTBEAT_MS / 1000)  # retries would have happened by now
    for dst in hosts:
        assert_exactly_once(mesh.inbox(mesh[dst], channel, consume=True), sent[dst])
        assert mesh.inbox(mesh[dst], channel) == []
    for h in hosts:
        serve = mesh[h].serve
        assert serve is not None and serve.poll() is None, mesh.log(mesh[h])
    print(
        f"joins: b {joins['b']['join_s']:.2f} s, c {joins['c']['join_s']:.2f} s; "
        f"all linked {linked_s:.2f} s after the last serve answered"
    )


# -- 2. a wrong code burns the invitation -----------------------------------------------------


def test_wrong_code_is_refused_and_burns_the_code(mesh: Mesh) -> None:
    a, d = mesh["a"], mesh["d"]
    before = mesh.members(a)
    pair, invite = mesh.start_pair(a)
    code = invite["code"]
    plate, first, second = code.split("-")
    wrong = f"{plate}-{first}-{next(w for w in WORDS if w != second)}"

    # found by mDNS, as a user would; the words do not match
    joined = mesh.kiana(d, "join", wrong, "--json")
    assert joined.returncode != 0
    assert "does not match" in joined.stderr, joined.stderr
    assert joined.stdout.strip() == ""
    assert not (d.home / "mind.json").exists()
    assert not (d.home / "keys").exists()

    # the inviter gives up on the code at once and says why
    out, err = pair.communicate(timeout=CLI_TIMEOUT_S)
    assert pair.returncode != 0
    assert '"failed"' in out and "pairing failed" in err, (out, err)
    assert mesh.members(a) == before
    state = mesh.get(a, f"/api/v1/mesh/pairing/{invite['nameplate']}")
    assert state["state"] == "failed"

    # the right code is now burnt (the mDNS advert is gone, so name the address)
    address = f"{mesh.lan.address('a')}:{MESH_PORT}"
    again = mesh.kiana(d, "join", code, "--address", address, "--json")
    assert again.returncode != 0
    assert "expired" in again.stderr or "already used" in again.stderr, again.stderr
    assert not (d.home / "mind.json").exists()
    assert mesh.members(a) == before


# -- 4. kill -9 in the middle of delivery -------------------------------------------------


def test_kill_9_mid_delivery_loses_and_duplicates_nothing(mesh: Mesh) -> None:
    a, b = mesh["a"], mesh["b"]
    channel = "app.crash"
    total = 200
    ids: list[str] = []

    def post(n: int) -> None:
        for _ in range(n):
            ids.append(mesh.send(a, b, channel, f"message {len(ids)}"))

    mesh.wait_all_up(("a", "b", "c"))
    # B dies while messages stream to it: a second thread kills it once some have arrived,
    # while this one keeps queueing on A (durable outbox)
    killed: dict[str, int] = {}

    def kill_b_mid_stream() -> None:
        def some_arrived() -> bool:
            return len(mesh.inbox(b, channel)) >= 10

        until(some_arrived, 20, "the first messages at B")
        killed["posted"] = len(ids)
        mesh.kill9(b)

    killer = threading.Thread(target=kill_b_mid_stream, daemon=True)
    killer.start()
    while len(ids) < 60 or (killer.is_alive() and len(ids) < 100):
        post(1)
    killer.join(30)
    assert "posted" in killed, "B was not killed"
    assert b.serve is not None and b.serve.returncode is not None
    # B comes back and A's backlog flows; A dies right after its last accepted message
    mesh.start_serve(b)
    post(60)
    mesh.kill9(a)
    mesh.start_serve(a)
    post(total - len(ids))
    assert len(ids) == len(set(ids)) == total
    print(f"B killed after {killed['posted']} of {total} were queued")

    wait_delivered(mesh, b, channel, set(ids), timeout_s=30)
    mesh.wait_all_up(("a", "b", "c"))
    time.sleep(3 * HEARTBEAT_MS / 1000)  # late retries would land now
    inbox = mesh.inbox(b, channel)
    assert_exactly_once(inbox, set(ids))
    assert {m["sender"] for m in inbox} == {a.device_id}
    texts = {m["id"]: m["text"] for m in inbox}
    assert [texts[i] for i in ids] == [f"message {n}" for n in range(total)]
    mesh.inbox(b, channel, consume=True)


# -- 5. garbage on the mesh port -----------------------------------------------------------


def test_garbage_on_the_mesh_port_leaves_the_node_serving(mesh: Mesh) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    hosts = ("a", "b", "c")
    mesh.wait_all_up(hosts)
    since = {h: mesh.get(mesh[h], "/api/v1/mesh/peers")["peers"] for h in hosts}
    proc = subprocess.run(
        [
            *mesh.lan.exec_prefix("d"),
            sys.executable,
            "-c",
            GARBAGE,
            mesh.lan.address("a"),
            str(MESH_PORT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results == dict.fromkeys(results, "closed"), results
    assert len(results) == 7

    assert a.serve is not None and a.serve.poll() is None, mesh.log(a)
    assert mesh.all_up(hosts), {h: mesh.peer_states(mesh[h]) for h in hosts}
    # the links that were up before are the same links (none was dropped and redialled)
    for h in hosts:
        now = {p["device"]: p["since"] for p in mesh.get(mesh[h], "/api/v1/mesh/peers")["peers"]}
        assert now == {p["device"]: p["since"] for p in since[h]}, h
    channel = "app.after-garbage"
    to_b = mesh.send(a, b, channel, "still here")
    to_a = mesh.send(c, a, channel, "me too")
    assert_exactly_once(wait_delivered(mesh, b, channel, {to_b}, 10), {to_b})
    assert_exactly_once(wait_delivered(mesh, a, channel, {to_a}, 10), {to_a})
    mesh.inbox(a, channel, consume=True)
    mesh.inbox(b, channel, consume=True)


# -- 3. revocation (last: it changes the mind for good) -----------------------------------------


def test_revoked_device_is_cut_off_everywhere(mesh: Mesh) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    mesh.wait_all_up(("a", "b", "c"))
    revoked = mesh.kiana(a, "devices", "revoke", c.device_id, "--yes")
    assert revoked.returncode == 0, revoked.stderr
    assert c.device_id in revoked.stdout

    def c_down_on(h: str) -> bool:
        return mesh.peer_states(mesh[h]).get(c.device_id) != "up"

    def lasting_links_of_c() -> list[dict[str, Any]]:
        """C's links that are up and older than a heartbeat.

        C keeps dialling A and B, and as the initiator it counts each attempt as up
        for the instant between Noise message 2 and the responder's refusal of
        message 3; no link of C may outlive that instant.
        """
        answer = mesh.api(c, "GET", "/api/v1/mesh/peers", timeout=3)
        assert answer.get("status") == 200, answer
        return lasting(answer["body"]["peers"])

    def lasting(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = time.time() * 1000
        return [p for p in peers if p["state"] == "up" and now - p["since"] > HEARTBEAT_MS]

    until(lambda: c_down_on("a") and c_down_on("b"), 5, "A and B to drop C")
    until(lambda: not lasting_links_of_c(), 5, "C to have no live link")
    # B learnt of the revocation from A (the members channel), not by failing to reach C
    b_view = {d["device_id"]: d for d in mesh.kiana_json(b, "devices")["devices"]}
    assert b_view[c.device_id]["revoked"], b_view[c.device_id]

    # it stays that way while C keeps trying, and nothing gets through either way
    channel = "app.revoked"
    from_c = mesh.api(
        c,
        "POST",
        "/api/v1/mesh/messages",
        {"to": a.device_id, "channel": channel, "text": "let me in"},
    )
    assert from_c.get("status") == 202, from_c  # C does not know: it queues
    to_c = mesh.api(
        a, "POST", "/api/v1/mesh/messages", {"to": c.device_id, "channel": channel, "text": "bye"}
    )
    deadline = time.monotonic() + 8 * HEARTBEAT_MS / 1000
    while time.monotonic() < deadline:
        assert c_down_on("a") and c_down_on("b")
        assert not lasting_links_of_c()
        time.sleep(0.1)
    assert mesh.all_up(("a", "b"))
    peers_c = mesh.kiana_json(c, "peers")["peers"]
    assert not lasting(peers_c), peers_c
    assert mesh.inbox(a, channel) == []
    assert mesh.inbox(c, channel) == []
    assert to_c.get("status") == 400, to_c  # A refuses to seal for a revoked device
