"""Zero cloud: in its default configuration a node talks to nothing but loopback.

Two independent layers of evidence for the same command sequence (init,
remember, add, search, blocks list/verify, export, import, status, config
show, and ``kiana serve`` answering real HTTP requests):

(a) every child process runs with a ``sitecustomize`` that installs a
    ``sys.addaudithook`` hook logging every socket connect, sendto, sendmsg,
    bind and name lookup; every logged address must be loopback (or a Unix
    socket). Positive controls show that the hook really fires in the kiana
    processes and really sees connections.
(b) the whole sequence runs inside a fresh network namespace whose only
    interface is ``lo``: with no network at all, everything still works.

In the root namespace the mesh's mDNS is switched off (tests never multicast
there, see helpers_cli.QUIET_MESH). Inside the namespace the node runs with its
true defaults: mesh listening on 0.0.0.0:7475 and mDNS on; the only traffic
allowed beyond loopback is then mDNS to the link-local group 224.0.0.251:5353,
which no router forwards. No STUN server or any other address is contacted.

Nothing here touches the root namespace's network configuration or sends a
packet anywhere but loopback.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers_cli import clean_env, kiana_argv, run_kiana

pytestmark = pytest.mark.slow

AUDIT_ENV = "ZERO_CLOUD_AUDIT_LOG"

SITECUSTOMIZE = '''
"""Installed by tests/test_zero_cloud.py: log every network-related socket event."""
import json
import os
import sys

_LOG = os.environ.get("ZERO_CLOUD_AUDIT_LOG")
_WITH_ADDRESS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
_LOOKUPS = {
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
    "socket.gethostname",
}


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, (str, int, float)):
        return value
    return repr(value)


def _hook(event, args):
    if event in _WITH_ADDRESS:
        family = getattr(args[0], "family", None)
        record = {"family": None if family is None else int(family), "address": _plain(args[1])}
    elif event in _LOOKUPS:
        record = {"family": None, "address": _plain(list(args[:2]))}
    else:
        return
    record.update(event=event, pid=os.getpid(), argv=[str(a) for a in sys.argv[:1]])
    line = (json.dumps(record) + "\\n").encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


if _LOG:
    sys.addaudithook(_hook)
'''

CLIENT = '''
"""HTTP client run inside the same (possibly isolated) network as the server."""
import http.client
import json
import sys
import time

port, token = int(sys.argv[1]), sys.argv[2]


def get(path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


deadline = time.monotonic() + 45
while True:
    try:
        health = get("/healthz")
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
status = get("/api/v1/status", {"Authorization": "Bearer " + token})
anonymous = get("/api/v1/status")
print(json.dumps({"health": health, "status": status, "anonymous": anonymous[0]}))
'''


def is_loopback_host(host: object) -> bool:
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_local(record: dict[str, Any]) -> bool:
    """True when the event cannot reach beyond this machine."""
    event, address = record["event"], record["address"]
    if event == "socket.gethostname":  # reads the kernel's host name; no network
        return True
    if record["family"] == socket.AF_UNIX:
        return True
    if event == "socket.sendmsg" and address is None:  # on a connected socket: see its connect
        return True
    if not isinstance(address, list) or not address:
        return False
    return is_loopback_host(address[0])


class Sandbox:
    """A place to run the command sequence: the audit hook, and an optional command prefix."""

    def __init__(self, root: Path, prefix: Sequence[str] = (), *, defaults: bool = False) -> None:
        self.root = root
        self.prefix = list(prefix)
        self.home = root / "home"
        self.log = root / "audit.log"
        hooks = root / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        (root / "client.py").write_text(CLIENT, encoding="utf-8")
        pythonpath = os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH")) if p)
        self.env = {AUDIT_ENV: str(self.log), "PYTHONPATH": pythonpath}
        if defaults:  # undo helpers_cli.QUIET_MESH: the shipped defaults of every setting
            self.env.update(
                {
                    "KIANA_MESH_DISCOVERY": "1",
                    "KIANA_MESH_PORT": "7475",
                    "KIANA_MESH_HOST": "0.0.0.0",
                }
            )

    def kiana(self, *args: object) -> subprocess.CompletedProcess[str]:
        proc = run_kiana(self.home, *args, env=self.env, prefix=self.prefix)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        return proc

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.prefix, *argv],
            env=clean_env(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def client(self, port: int, token: str) -> dict[str, Any]:
        proc = subprocess.run(
            [*self.prefix, sys.executable, str(self.root / "client.py"), str(port), token],
            env=clean_env(self.env),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def run_sequence(box: Sandbox, *, from_test_process: bool) -> dict[str, Any]:
    """Use the node the way its owner would; returns what the positive controls need."""
    init = json.loads(box.kiana("init", "--name", "Offline mind", "--json").stdout)
    box.kiana("remember", "The router password is on the back of the box", "-t", "home")
    box.kiana("remember", "Nothing here needs the internet", "--scope", "private")
    notes = box.root / "notes"
    notes.mkdir()
    for i in range(3):
        (notes / f"n{i}.md").write_text(f"# Note {i}\n\nOffline note number {i}.\n")
    box.kiana("add", *sorted(notes.iterdir()))
    hits = json.loads(box.kiana("search", "offline", "--json").stdout)
    assert len(hits) == 3
    listed = json.loads(box.kiana("blocks", "list", "--json").stdout)
    assert len(listed["items"]) == 5
    box.kiana("blocks", "verify")
    export = box.root / "mind.jsonl"
    box.kiana("export", "--output", export)
    imported = json.loads(box.kiana("import", export, "--json").stdout)
    assert (imported["stored"], imported["duplicates"]) == (0, 5)
    status = json.loads(box.kiana("status", "--json").stdout)
    assert status["mind"]["id"] == init["mind"]
    box.kiana("config", "show")

    port = free_port()
    token = (box.home / "api-token").read_text().strip()
    server = box.popen(kiana_argv(box.home, "serve", "--port", port))
    try:
        answers = box.client(port, token)
        if from_test_process:
            assert http_get(port, "/healthz")[0] == 200
            code, body = http_get(port, "/api/v1/status", token)
            assert code == 200 and body["mind"]["id"] == init["mind"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
            pytest.fail(f"kiana serve did not stop on SIGTERM: {err}")
    assert answers["health"] == [200, {"status": "ok"}], err
    assert answers["status"][0] == 200 and answers["status"][1]["mind"]["id"] == init["mind"]
    assert answers["status"][1]["blocks"]["total"] == 5
    assert answers["anonymous"] == 401
    assert server.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err
    return {"port": port, "server_pid": server.pid}


MDNS_GROUP = ("224.0.0.251", 5353)


def is_lan_discovery(record: dict[str, Any]) -> bool:
    """mDNS to the link-local group, or binding a listener on the wildcard address."""
    address = record["address"]
    if not isinstance(address, list) or len(address) < 2:
        return False
    if record["event"] in ("socket.sendto", "socket.sendmsg"):
        return (address[0], address[1]) == MDNS_GROUP
    if record["event"] == "socket.bind":
        return address[0] in ("0.0.0.0", "", "::")
    return False


def check_audit(box: Sandbox, port: int, server_pid: int, *, lan_discovery: bool = False) -> None:
    records = box.records()
    assert records, "the audit hook recorded nothing: it is not installed"

    # positive controls: the hook runs inside the kiana processes ...
    kiana_records = [r for r in records if r["argv"][:1] != [str(box.root / "client.py")]]
    assert any(r["event"] == "socket.gethostname" for r in kiana_records), "init not audited"
    assert any(
        r["pid"] == server_pid and r["event"] == "socket.bind" and r["address"][1] == port
        for r in records
    ), "kiana serve's bind was not audited"
    # ... and sees real connections (the client's requests to the server)
    assert any(
        r["event"] == "socket.connect" and r["address"] == ["127.0.0.1", port] for r in records
    ), "no connection was audited"

    remote = [r for r in records if not is_local(r)]
    if lan_discovery:
        # positive controls: the mesh listened with its defaults and mDNS started
        binds = {
            tuple(r["address"][:2])
            for r in records
            if r["pid"] == server_pid and r["event"] == "socket.bind"
        }
        assert ("0.0.0.0", 7475) in binds, binds
        assert any(b[1] == MDNS_GROUP[1] for b in binds), binds
        remote = [r for r in remote if not is_lan_discovery(r)]
    assert remote == [], "non-loopback network activity"
    # kiana itself never connects anywhere, not even to loopback
    assert [r for r in kiana_records if r["event"] == "socket.connect"] == []


def test_audit_catches_non_loopback_addresses(tmp_path: Path) -> None:
    """Negative control: the hook and the check do flag a remote address (no packet is sent)."""
    box = Sandbox(tmp_path)
    probe = (
        "import socket\n"
        "socket.getaddrinfo('192.0.2.7', 80, flags=socket.AI_NUMERICHOST)\n"
        "socket.getaddrinfo('::1', 80, flags=socket.AI_NUMERICHOST)\n"
        "a, b = socket.socketpair()\n"
        "a.close(); b.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=clean_env(box.env), timeout=60, check=False
    )
    assert proc.returncode == 0
    flagged = [r["address"][0] for r in box.records() if not is_local(r)]
    assert flagged == ["192.0.2.7"]

    assert is_local({"event": "socket.connect", "family": 1, "address": "/run/x.sock"})
    assert is_local({"event": "socket.connect", "family": 10, "address": ["::1", 80, 0, 0]})
    assert is_local({"event": "socket.connect", "family": 10, "address": ["::ffff:127.0.0.1", 1]})
    assert is_local({"event": "socket.gethostbyname", "family": None, "address": ["localhost"]})
    assert not is_local({"event": "socket.connect", "family": 2, "address": ["10.0.0.1", 80]})
    assert not is_local({"event": "socket.sendto", "family": 2, "address": ["8.8.8.8", 53]})
    assert not is_local({"event": "socket.getaddrinfo", "family": None, "address": [None, 80]})
    assert not is_local(
        {"event": "socket.getaddrinfo", "family": None, "address": ["pypi.org", 443]}
    )


def test_default_node_only_uses_loopback(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    seen = run_sequence(box, from_test_process=True)
    check_audit(box, seen["port"], seen["server_pid"])


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A fresh network namespace with only ``lo`` up; the prefix that runs commands in it."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )
    if ip is None:
        pytest.skip("`ip` is not installed (Debian package iproute2)")
    name = f"kiana-zc-{secrets.token_hex(4)}"
    added = subprocess.run(
        [ip, "netns", "add", name], capture_output=True, text=True, timeout=30, check=False
    )
    if added.returncode != 0:
        pytest.skip(f"`ip netns add` is unavailable here: {added.stderr.strip()}")
    try:
        prefix = [ip, "netns", "exec", name]
        subprocess.run([*prefix, ip, "link", "set", "lo", "up"], check=True, timeout=30)
        yield prefix
    finally:
        subprocess.run([ip, "netns", "delete", name], check=False, timeout=30)


@pytest.mark.netns
def test_node_works_with_no_network_at_all(tmp_path: Path, netns: list[str]) -> None:
    ip = netns[0]
    links = subprocess.run(
        [*netns, ip, "-o", "link", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    routes = subprocess.run(
        [*netns, ip, "route", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert routes.strip() == "", "the namespace must have no route off this machine"

    box = Sandbox(tmp_path, prefix=netns, defaults=True)
    seen = run_sequence(box, from_test_process=False)
    check_audit(box, seen["port"], seen["server_pid"], lan_discovery=True)
