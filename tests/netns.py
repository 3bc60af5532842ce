"""Multi-host networks in Linux network namespaces, for the mesh integration tests.

* :class:`Lan`: N hosts on one Ethernet segment (a bridge in a namespace of its
  own), with multicast routed to the segment so mDNS works between them.
* :class:`NatTopology`: a "public" segment (203.0.113.0/24, TEST-NET-3: never
  routed anywhere real) with public hosts (a server, ...), and two private LANs
  each behind a router namespace that masquerades and drops inbound NEW
  connections from its WAN, like a home router.
* :func:`start_coturn`: a real TURN/STUN server (coturn) inside a namespace.
* :func:`stun_binding`: a hand-built STUN binding request sent from a namespace.

Everything lives in namespaces created here, named with a per-run prefix (pid
and random bits) so parallel runs never collide; nothing is configured in the
root namespace, and no packet leaves the namespaces. On exit (also on failure
part-way through setup) every process started through ``run`` is stopped and
every namespace deleted, which deletes its veths and bridges with it.

Tests call :func:`require_tools` (or use a topology, which calls it): without
root or the tools the test is skipped, except under CI (``CI`` set), where it
fails, so a CI machine that lost a package cannot silently skip these tests.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import pytest

CMD_TIMEOUT_S = 30.0

_IP_CANDIDATES = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"network-namespace tests need {reason} (CI is set: failing, not skipping)")
    pytest.skip(f"network-namespace tests need {reason}")


def _which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        path = f"{folder}/{tool}"
        if os.access(path, os.X_OK):
            return path
    return None


def require_tools(*tools: str) -> dict[str, str]:
    """Root and the given tools (``ip`` always): their paths, or skip (fail under CI)."""
    if os.geteuid() != 0:
        _unavailable("root")
    paths: dict[str, str] = {}
    for tool in ("ip", *tools):
        path = _which(tool)
        if path is None:
            package = {"ip": "iproute2", "turnserver": "coturn"}.get(tool, tool)
            _unavailable(f"`{tool}` (Debian package {package})")
        paths[tool] = path
    return paths


def _prefix(tag: str) -> str:
    return f"k{tag}{os.getpid() % 100000}{secrets.token_hex(2)}"


class _Namespaces:
    """Creates namespaces and processes, and removes all of them on exit."""

    tools: tuple[str, ...] = ()

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.prefix = ""
        self.ip = ""
        self.paths: dict[str, str] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._ns_of: dict[str, str] = {}
        self._addr_of: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Self:
        self.paths = require_tools(*self.tools)
        self.ip = self.paths["ip"]
        self.prefix = _prefix(self.tag)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every process started here, then delete every namespace (and so its links)."""
        procs, self._procs = self._procs, []
        for proc in procs:
            stop_process(proc)
        namespaces, self._namespaces = self._namespaces, []
        for ns in reversed(namespaces):
            subprocess.run(
                [self.ip, "netns", "delete", ns],
                capture_output=True,
                timeout=CMD_TIMEOUT_S,
                check=False,
            )

    # -- building blocks ---------------------------------------------------------

    def sh(self, *argv: str, ns: str | None = None) -> str:
        """Run a configuration command (in namespace ``ns``); its stdout. Raises on failure."""
        full = [self.ip, "netns", "exec", ns, *argv] if ns else list(argv)
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def add_namespace(self, suffix: str) -> str:
        ns = f"{self.prefix}-{suffix}"
        self.sh(self.ip, "netns", "add", ns)
        self._namespaces.append(ns)
        self.sh(self.ip, "-n", ns, "link", "set", "lo", "up")
        # IPv4 only: no IPv6 duplicate-address detection delays, no IPv6 mDNS.
        self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
        self.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        return ns

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set a (per-namespace) sysctl in ``ns``; no dependency on procps' ``sysctl``."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.sh("sh", "-c", f"echo {value} > {path}", ns=ns)

    def add_bridge(self, ns: str, name: str) -> None:
        self.sh(self.ip, "-n", ns, "link", "add", name, "type", "bridge")
        # no snooping: multicast (mDNS) is flooded to every port, as on a dumb switch
        self.sh(self.ip, "-n", ns, "link", "set", name, "type", "bridge", "mcast_snooping", "0")
        self.sh(self.ip, "-n", ns, "link", "set", name, "up")

    def add_port(self, bridge_ns: str, bridge: str, port: str, ns: str, ifname: str) -> None:
        """A veth pair: ``port`` on ``bridge`` in ``bridge_ns``, ``ifname`` in ``ns``."""
        ip = self.ip
        self.sh(ip, "-n", bridge_ns, "link", "add", port, "type", "veth", "peer", "name", ifname)
        self.sh(ip, "-n", bridge_ns, "link", "set", ifname, "netns", ns)
        self.sh(ip, "-n", bridge_ns, "link", "set", port, "master", bridge)
        self.sh(ip, "-n", bridge_ns, "link", "set", port, "up")

    def add_address(self, ns: str, ifname: str, cidr: str) -> None:
        self.sh(self.ip, "-n", ns, "addr", "add", cidr, "dev", ifname)
        self.sh(self.ip, "-n", ns, "link", "set", ifname, "up")

    def register(self, host: str, ns: str, address: str) -> None:
        self._ns_of[host] = ns
        self._addr_of[host] = address

    # -- use ---------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self._ns_of)

    def ns(self, host: str) -> str:
        """The namespace name of ``host``."""
        return self._ns_of[host]

    def address(self, host: str) -> str:
        """The IPv4 address of ``host`` (on its LAN, or on the public segment)."""
        return self._addr_of[host]

    def exec_prefix(self, host: str) -> list[str]:
        """The argv prefix that runs a command inside ``host``'s namespace."""
        return [self.ip, "netns", "exec", self.ns(host)]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        **popen: Any,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``host``'s namespace (text mode, stdout/stderr piped).

        The process is stopped when the topology closes, if it still runs.
        """
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        proc: subprocess.Popen[str] = subprocess.Popen(
            [*self.exec_prefix(host), *argv],
            env=dict(os.environ if env is None else env),
            text=True,
            **popen,
        )
        self._procs.append(proc)
        return proc

    def check(
        self, host: str, argv: Sequence[str], *, timeout: float = CMD_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace to completion; stdout/stderr captured."""
        return subprocess.run(
            [*self.exec_prefix(host), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped, pipes closed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class Lan(_Namespaces):
    """``hosts`` namespaces on one switched segment ``subnet`` (default 10.77.0.0/24).

    The switch is a bridge in a namespace of its own, without an address. Each
    host has ``eth0`` with the next address of the subnet (.1, .2, ...), ``lo``
    up, and the route ``224.0.0.0/4 dev eth0`` so multicast (mDNS) leaves on it.
    Hosts are named ``h0``, ``h1``, ... unless ``names`` are given.
    """

    def __init__(
        self,
        hosts: int = 2,
        *,
        names: Sequence[str] | None = None,
        subnet: str = "10.77.0.0/24",
    ) -> None:
        super().__init__("lan")
        self.names = list(names) if names is not None else [f"h{i}" for i in range(hosts)]
        self.subnet = ipaddress.IPv4Network(subnet)
        if len(self.names) >= self.subnet.num_addresses - 2:
            raise ValueError("more hosts than addresses in the subnet")
        self.switch = ""

    def _build(self) -> None:
        self.switch = self.add_namespace("sw")
        self.add_bridge(self.switch, "br0")
        hosts = self.subnet.hosts()
        for i, name in enumerate(self.names):
            ns = self.add_namespace(f"h{i}")
            self.add_port(self.switch, "br0", f"p{i}", ns, "eth0")
            address = str(next(hosts))
            self.add_address(ns, "eth0", f"{address}/{self.subnet.prefixlen}")
            self.sh(self.ip, "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            self.register(name, ns, address)


PUBLIC_NET = ipaddress.IPv4Network("203.0.113.0/24")  # TEST-NET-3 (RFC 5737)


class NatTopology(_Namespaces):
    """Two private LANs behind NAT routers, and public hosts, on a public segment.

    ::

        public segment 203.0.113.0/24 (a bridge in its own namespace)
          ├── router-a  wan 203.0.113.2  ── lan 10.1.0.1/24 ── hosts_a (10.1.0.2, ...)
          ├── router-b  wan 203.0.113.3  ── lan 10.2.0.1/24 ── hosts_b (10.2.0.2, ...)
          └── public    203.0.113.10, .11, ...   (default: one host named "server")

    Each router masquerades what leaves its WAN (``iptables -t nat -A POSTROUTING
    -o wan -j MASQUERADE``; with ``symmetric`` the source port is randomised per
    mapping, ``--random-fully``), forwards only ESTABLISHED/RELATED from the WAN
    and drops every NEW connection arriving on its WAN, forwarded or to itself.
    The routers also hold a route to the other LAN via the other router (an
    "ISP" that would deliver private addresses), so it is the firewall, not a
    missing route, that keeps the two LANs apart. Hosts on the LANs route
    everything via their router; public hosts know only their segment.
    """

    tools = ("iptables",)

    def __init__(
        self,
        *,
        hosts_a: Sequence[str] = ("a",),
        hosts_b: Sequence[str] = ("b",),
        public: Sequence[str] = ("server",),
        symmetric: bool = False,
    ) -> None:
        super().__init__("nat")
        self.hosts_a = list(hosts_a)
        self.hosts_b = list(hosts_b)
        self.public = list(public)
        self.symmetric = symmetric
        self.lans = {
            "a": ipaddress.IPv4Network("10.1.0.0/24"),
            "b": ipaddress.IPv4Network("10.2.0.0/24"),
        }
        self.wan = {"a": "203.0.113.2", "b": "203.0.113.3"}

    def router(self, side: str) -> str:
        """The host name of the router of LAN ``side`` ("a" or "b")."""
        return f"router-{side}"

    def _build(self) -> None:
        ip = self.ip
        inet = self.add_namespace("inet")
        self.add_bridge(inet, "br0")
        plen = PUBLIC_NET.prefixlen
        for i, name in enumerate(self.public):
            ns = self.add_namespace(f"pub{i}")
            address = str(PUBLIC_NET[10 + i])
            self.add_port(inet, "br0", f"pub{i}", ns, "eth0")
            self.add_address(ns, "eth0", f"{address}/{plen}")
            self.register(name, ns, address)
        for side, hosts in (("a", self.hosts_a), ("b", self.hosts_b)):
            lan = self.lans[side]
            router = self.add_namespace(f"r{side}")
            self.register(self.router(side), router, self.wan[side])
            self.add_port(inet, "br0", f"wan{side}", router, "wan")
            self.add_address(router, "wan", f"{self.wan[side]}/{plen}")
            self.add_bridge(router, "lan")
            gateway = str(lan[1])
            self.sh(ip, "-n", router, "addr", "add", f"{gateway}/{lan.prefixlen}", "dev", "lan")
            for j, name in enumerate(hosts):
                ns = self.add_namespace(f"{side}{j}")
                address = str(lan[2 + j])
                self.add_port(router, "lan", f"p{j}", ns, "eth0")
                self.add_address(ns, "eth0", f"{address}/{lan.prefixlen}")
                self.sh(ip, "-n", ns, "route", "add", "default", "via", gateway)
                self.register(name, ns, address)
            self._firewall(router)
        for side, other in (("a", "b"), ("b", "a")):
            self.sh(
                ip,
                "-n",
                self.ns(self.router(side)),
                "route",
                "add",
                str(self.lans[other]),
                "via",
                self.wan[other],
            )

    def _firewall(self, router: str) -> None:
        ipt = self.paths["iptables"]
        self.sysctl(router, "net.ipv4.ip_forward", "1")
        masquerade = [ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        if self.symmetric:
            masquerade.append("--random-fully")
        established = "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        rules = [
            masquerade,
            [ipt, "-P", "FORWARD", "DROP"],
            [ipt, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
            [ipt, *f"-A FORWARD -i wan {established}".split()],
            [ipt, "-A", "FORWARD", "-i", "wan", "-j", "DROP"],
            [ipt, *f"-A INPUT -i wan {established}".split()],
            [ipt, "-A", "INPUT", "-i", "wan", "-j", "DROP"],
        ]
        for rule in rules:
            self.sh(*rule, ns=router)


# -- STUN and TURN -----------------------------------------------------------------

STUN_PROBE = r"""
import json, os, socket, struct, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tid = os.urandom(12)
request = struct.pack(">HHI", 0x0001, 0, 0x2112A442) + tid
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + timeout
answer = None
while answer is None and time.monotonic() < deadline:
    sock.sendto(request, (host, port))
    sock.settimeout(min(0.2, max(0.01, deadline - time.monotonic())))
    try:
        data, _ = sock.recvfrom(2048)
    except socket.timeout:
        continue
    if len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == tid:
        answer = data
if answer is None:
    print(json.dumps({"error": "no STUN response"}))
    sys.exit(1)
pos, mapped = 20, None
while pos + 4 <= len(answer):
    kind, size = struct.unpack(">HH", answer[pos:pos + 4])
    value = answer[pos + 4:pos + 4 + size]
    if kind == 0x0020 and value[1] == 1:
        xport = struct.unpack(">H", value[2:4])[0] ^ 0x2112
        xaddr = bytes(a ^ b for a, b in zip(value[4:8], struct.pack(">I", 0x2112A442)))
        mapped = [socket.inet_ntoa(xaddr), xport]
    pos += 4 + size + (-size % 4)
print(json.dumps({"mapped": mapped}))
"""


def stun_binding(
    net: _Namespaces, host: str, server: str, port: int = 3478, timeout: float = 5.0
) -> tuple[str, int] | None:
    """Send a STUN binding request from ``host`` to ``server:port``; the mapped address.

    None when no answer came within ``timeout`` seconds.
    """
    proc = net.check(
        host,
        [sys.executable, "-c", STUN_PROBE, server, str(port), str(timeout)],
        timeout=timeout + CMD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        return None
    mapped = json.loads(proc.stdout)["mapped"]
    return None if mapped is None else (str(mapped[0]), int(mapped[1]))


@dataclass
class Coturn:
    """A running coturn ``turnserver`` in a namespace; stop it with :meth:`stop`."""

    net: _Namespaces
    host: str
    listen_ip: str
    port: int
    user: str
    password: str
    realm: str
    workdir: Path
    proc: subprocess.Popen[str]
    min_port: int
    max_port: int

    @property
    def turn_url(self) -> str:
        return f"turn:{self.listen_ip}:{self.port}?transport=udp"

    @property
    def stun_url(self) -> str:
        return f"stun:{self.listen_ip}:{self.port}"

    def log(self) -> str:
        path = self.workdir / "turn.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_coturn(
    net: _Namespaces,
    host: str,
    listen_ip: str | None = None,
    *,
    user: str,
    password: str,
    realm: str,
    port: int = 3478,
    min_port: int = 49160,
    max_port: int = 49200,
    allowed_peers: Sequence[str] = ("203.0.113.0-203.0.113.255", "10.0.0.0-10.255.255.255"),
    timeout: float = 15.0,
) -> Coturn:
    """Start ``turnserver`` in ``host``'s namespace, listening and relaying on ``listen_ip``.

    UDP and TCP on ``port``, no TLS/DTLS, no CLI, long-term credentials for
    ``user``/``password`` in ``realm``, relay ports ``min_port``–``max_port``,
    peers explicitly allowed in ``allowed_peers`` (the public test net and the
    private LANs). Waits (at most ``timeout`` s) until a STUN binding request
    sent from inside the namespace is answered. The config, log, pid file and
    user database live in a temporary directory deleted by :meth:`Coturn.stop`.
    """
    turnserver = require_tools("turnserver")["turnserver"]
    listen_ip = listen_ip or net.address(host)
    workdir = Path(tempfile.mkdtemp(prefix="kiana-coturn-"))
    lines = [
        f"listening-port={port}",
        f"listening-ip={listen_ip}",
        f"relay-ip={listen_ip}",
        f"min-port={min_port}",
        f"max-port={max_port}",
        "lt-cred-mech",
        f"user={user}:{password}",
        f"realm={realm}",
        "no-tls",
        "no-dtls",
        "no-cli",
        "no-multicast-peers",
        "no-software-attribute",
        "simple-log",
        f"log-file={workdir / 'turn.log'}",
        f"pidfile={workdir / 'turn.pid'}",
        f"userdb={workdir / 'turndb'}",
        *(f"allowed-peer-ip={peers}" for peers in allowed_peers),
    ]
    config = workdir / "turnserver.conf"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = net.run(
        host,
        [turnserver, "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Coturn(
        net, host, listen_ip, port, user, password, realm, workdir, proc, min_port, max_port
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"turnserver exited ({proc.returncode}): {err}\n{server.log()}")
            if stun_binding(net, host, listen_ip, port, timeout=1.0) is not None:
                return server
            if time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not answer STUN in {timeout} s\n{server.log()}")
    except BaseException:
        server.stop()
        raise


# -- small servers for reachability checks -------------------------------------------

TCP_ECHO = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen()
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(5)
        data = conn.recv(4096)
        conn.sendall(data)
"""

UDP_ECHO = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    sock.sendto(data, peer)
"""

TCP_PROBE = r"""
import json, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(b"ping")
        print(json.dumps({"ok": conn.recv(16).decode()}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}))
"""


def start_echo(
    net: _Namespaces, host: str, port: int, *, udp: bool = False
) -> subprocess.Popen[str]:
    """A TCP (or UDP) echo server on ``host``'s address; returns once it listens."""
    script = UDP_ECHO if udp else TCP_ECHO
    proc = net.run(host, [sys.executable, "-c", script, net.address(host), str(port)])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        stop_process(proc)
        raise RuntimeError(
            f"echo server did not start: {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc


def tcp_probe(
    net: _Namespaces, host: str, target: str, port: int, timeout: float = 2.0
) -> dict[str, str]:
    """From ``host``, connect to ``target:port`` and echo 4 bytes: {"ok": ...} or {"error": ...}."""
    proc = net.check(
        host,
        [sys.executable, "-c", TCP_PROBE, target, str(port), str(timeout)],
        timeout=timeout + CMD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@contextlib.contextmanager
def running(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """Stop ``proc`` when the block ends."""
    try:
        yield proc
    finally:
        stop_process(proc)
