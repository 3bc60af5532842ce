"""Benchmark WebRTC links relayed by TURN between two devices behind NAT.

Usage (as root: it builds network namespaces and runs coturn)::

    .venv/bin/python benchmarks/bench_relay.py [--trials 20] [--messages 16]
                                               [--out benchmarks/results/relay.json]

Topology (``tests/netns.py`` ``NatTopology``): devices A and B on two private LANs
behind masquerading routers that drop inbound connections, a home node H and a
coturn server on the public segment. The homes are made first (H inits, A and B
pair with it in-process over loopback); then each device runs a ``MeshService`` in
its namespace (this script in ``child`` mode) with discovery off, H's address as
its only peer, coturn as its only ICE server and ``mesh.relay_only`` set. The
automatic WebRTC dialer is switched off in A and B so that A alone decides when
to connect.

Measured in A:

* **connect**: from ``RtcManager.connect(B)`` until the Noise link is up, per trial:
  ICE gathering (a TURN allocation), the offer and the answer sealed through H,
  ICE checks between the two relay candidates, DTLS, SCTP, the data channel and the
  Noise XX handshake. Then A closes the link and waits before the next trial.
* **throughput** of ``--messages`` end-to-end messages of 1 MiB (sealed, stored,
  acknowledged: ``MeshService.send`` until the outbox is empty):
  A→B over the relayed WebRTC link, and A→H over a direct TCP link through NAT-A
  (the same messenger on the other carrier).
* **baseline**: a raw TCP socket from A to a sink on H through NAT-A (the same
  bytes, no encryption, no storage). Raw UDP through the same TURN server is not
  measured: without congestion control it measures packet loss, not a link.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(REPO))

from netns import NatTopology, start_coturn, stop_process  # noqa: E402

MESH_PORT = 7475
SINK_PORT = 9000
MIB = 1 << 20
TARGET_MEDIAN_S = 2.0
TURN_USER = "kiana"
TURN_PASSWORD = "bench-password"


def summary(values: list[float | None]) -> dict[str, Any]:
    ok = sorted(v for v in values if v is not None)
    if not ok:
        return {"n": 0, "failed": len(values)}
    p95 = ok[min(len(ok) - 1, round(0.95 * (len(ok) - 1)))]
    return {
        "n": len(ok),
        "failed": len(values) - len(ok),
        "median_s": round(statistics.median(ok), 4),
        "p95_s": round(p95, 4),
        "min_s": round(ok[0], 4),
        "max_s": round(ok[-1], 4),
    }


# -- child: one device in its namespace ------------------------------------------------


async def child(args: argparse.Namespace) -> None:
    from kiana.config import load_settings
    from kiana.mesh.service import MeshService
    from kiana.node import Node

    environ = {
        "KIANA_MESH_HOST": "0.0.0.0",
        "KIANA_MESH_PORT": str(MESH_PORT),
        "KIANA_MESH_DISCOVERY": "0",
        "KIANA_MESH_HEARTBEAT_MS": "1000",
    }
    if args.role != "home":
        environ |= {
            "KIANA_MESH_PEERS": f"{args.home_addr}:{MESH_PORT}",
            "KIANA_MESH_ICE_SERVERS": args.turn,
            "KIANA_MESH_TURN_USERNAME": TURN_USER,
            "KIANA_MESH_TURN_PASSWORD": TURN_PASSWORD,
            "KIANA_MESH_RELAY_ONLY": "1",
        }
    settings = load_settings(home=Path(args.home), environ=environ)
    node = await asyncio.to_thread(Node.open, settings)
    mesh = MeshService(node, settings)  # no fixed seed: signal ids must differ between nodes
    received = [0]

    async def sink(sender: str, channel: str, body: bytes) -> None:
        received[0] += 1

    mesh.handlers["bench"] = sink
    await mesh.start()
    if args.role != "home":
        mesh._maybe_webrtc = lambda now: None  # type: ignore[method-assign]
    server = None
    if args.role == "home":
        server = await asyncio.start_server(tcp_sink, "0.0.0.0", SINK_PORT)
    try:
        if args.role == "a":
            result = await measure(mesh, args)
            print(json.dumps(result), flush=True)
        else:
            print(json.dumps({"event": "ready"}), flush=True)
            await asyncio.Event().wait()  # until SIGTERM
    finally:
        if server is not None:
            server.close()
        await mesh.stop()
        await asyncio.to_thread(node.close)


async def tcp_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    while chunk := await reader.read(1 << 16):
        total += len(chunk)
    writer.write(total.to_bytes(8, "big"))
    await writer.drain()
    writer.close()


async def until(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def outbox_empty(mesh: Any, device: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while await mesh._run(mesh.messenger.outbox, device):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def is_up(mesh: Any, device: str) -> bool:
    peer = mesh.peers.get(device)
    return bool(peer and peer.link and peer.link.state.value == "up")


async def measure(mesh: Any, args: argparse.Namespace) -> dict[str, Any]:
    from kiana.errors import MeshError

    b, h = args.peer_b, args.peer_h
    if not await until(lambda: is_up(mesh, h), 30):
        raise SystemExit("A did not link to the home node")
    await asyncio.sleep(1.0)  # membership records exchanged, startup settled
    trials: list[dict[str, Any]] = []
    for n in range(args.trials):
        start = time.perf_counter()
        try:
            await mesh.relay.connect(b)
            elapsed: float | None = time.perf_counter() - start
            error = None
        except MeshError as exc:
            elapsed, error = None, f"{exc.code}: {exc.message}"
        peer = mesh.peers.get(b)
        kind = peer.kind if peer is not None else ""
        trials.append({"trial": n, "connect_s": elapsed, "kind": kind, "error": error})
        print(f"trial {n:2} connect {elapsed} {kind} {error or ''}", file=sys.stderr)
        if n < args.trials - 1 and peer is not None and peer.link is not None:
            peer.link.close("benchmark: next trial")
            await mesh._flush(peer)
            await until(lambda: not is_up(mesh, b), 5)
            await asyncio.sleep(0.5)  # let B see the close before the next offer

    if not is_up(mesh, b):
        await mesh.relay.connect(b)
    payload = os.urandom(MIB)
    throughput: dict[str, Any] = {}
    for label, device in (("webrtc_turn", b), ("tcp_link", h)):
        await mesh.send(device, "bench", b"warm-up")
        await outbox_empty(mesh, device, 30)
        link = mesh.peers[device].link
        sent_before = link.bytes_out
        start = time.perf_counter()
        for _ in range(args.messages):
            await mesh.send(device, "bench", payload)
        done = await outbox_empty(mesh, device, 300)
        seconds = time.perf_counter() - start
        throughput[label] = {
            "messages": args.messages,
            "seconds": round(seconds, 3),
            "mb_per_s": round(args.messages * MIB / seconds / 1e6, 2) if done else None,
            "complete": done,
            # link bytes sent / payload bytes: above 1.0 by Noise and envelope overhead,
            # and by every message the messenger retransmitted before its ACK arrived
            "bytes_ratio": round((link.bytes_out - sent_before) / (args.messages * MIB), 3),
        }
        print(f"{label}: {throughput[label]}", file=sys.stderr)
    throughput["raw_tcp"] = await raw_tcp(args.home_addr, args.messages, payload)
    return {"trials": trials, "throughput": throughput}


async def raw_tcp(host: str, messages: int, payload: bytes) -> dict[str, Any]:
    start = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, SINK_PORT), 10)
    for _ in range(messages):
        writer.write(payload)
        await writer.drain()
    writer.write_eof()
    total = int.from_bytes(await asyncio.wait_for(reader.readexactly(8), 60), "big")
    seconds = time.perf_counter() - start
    writer.close()
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total / seconds / 1e6, 2),
        "complete": total == messages * len(payload),
    }


# -- parent: the topology, the homes, the children ---------------------------------------------


def make_homes(root: Path) -> dict[str, tuple[Path, str]]:
    from tests.mesh_helpers import init_node, pair_into, start_service, stop_service

    from kiana.home import load_identity

    async def pair() -> None:
        h = await start_service(init_node(root / "h", "home"))
        try:
            await pair_into(h, root / "a", "a")
            await pair_into(h, root / "b", "b")
        finally:
            await stop_service(h)

    asyncio.run(pair())
    out = {}
    for role in ("h", "a", "b"):
        from tests.mesh_helpers import settings_for

        keys, _ = load_identity(settings_for(root / role))
        out[role] = (root / role, keys.device_id)
    return out


def machine_info() -> dict[str, Any]:
    import aioice
    import aiortc

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "aiortc": aiortc.__version__,
        "aioice": aioice.__version__,
        "turn": "coturn (turnserver) in a network namespace, UDP, long-term credentials",
    }


def parent(args: argparse.Namespace) -> int:
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="kiana-bench-relay-") as tmp:
        root = Path(tmp)
        homes = make_homes(root)
        with NatTopology(public=("server", "home")) as net:
            turn = start_coturn(
                net, "server", user=TURN_USER, password=TURN_PASSWORD, realm="kiana.bench"
            )
            with turn:
                common = [
                    "--home-addr",
                    net.address("home"),
                    "--turn",
                    f"turn:{turn.listen_ip}:{turn.port}",
                ]
                procs = {}
                for role, host in (("home", "home"), ("b", "b")):
                    home = homes["h" if role == "home" else role][0]
                    argv = [sys.executable, __file__, "child", "--role", role, "--home", str(home)]
                    with (root / f"{role}.log").open("w") as log:
                        procs[role] = net.run(host, [*argv, *common], stderr=log)
                    assert procs[role].stdout is not None
                    line = procs[role].stdout.readline()
                    if '"ready"' not in line:
                        raise SystemExit(f"{role} did not start")
                argv = [sys.executable, __file__, "child", "--role", "a"]
                argv += ["--home", str(homes["a"][0]), *common]
                argv += ["--peer-b", homes["b"][1], "--peer-h", homes["h"][1]]
                argv += ["--trials", str(args.trials), "--messages", str(args.messages)]
                a = net.run("a", argv, stderr=None)
                try:
                    out, _ = a.communicate(timeout=args.timeout)
                finally:
                    for proc in (a, *procs.values()):
                        stop_process(proc)
                if a.returncode != 0:
                    raise SystemExit(f"A failed ({a.returncode})")
                result = json.loads(out.strip().splitlines()[-1])
                if os.environ.get("BENCH_DEBUG"):
                    for role in procs:
                        print(f"--- {role}", (root / f"{role}.log").read_text()[-5000:])
                    print("--- turn", turn.log()[-8000:])

    connect = summary([t["connect_s"] for t in result["trials"]])
    kinds = sorted({t["kind"] for t in result["trials"] if t["connect_s"] is not None})
    tp = result["throughput"]
    print(
        f"\n{'connect() → Noise link up via TURN, N=' + str(args.trials):48} {'median':>9} {'p95':>9}"
    )
    if connect["n"]:
        print(
            f"{'  relayed WebRTC link (' + ','.join(kinds) + ')':48}"
            f" {connect['median_s'] * 1000:7.0f}ms {connect['p95_s'] * 1000:7.0f}ms"
            f"   failed {connect['failed']}"
        )
    print(
        f"\n{f'throughput, {args.messages} x 1 MiB':48} {'MB/s':>9} {'seconds':>9} {'sent/payload':>13}"
    )
    for key, label in (
        ("webrtc_turn", "messages A→B, WebRTC via TURN"),
        ("tcp_link", "messages A→H, TCP link through NAT-A"),
        ("raw_tcp", "raw TCP socket A→H through NAT-A (baseline)"),
    ):
        row = tp[key]
        mbps = "-" if row["mb_per_s"] is None else f"{row['mb_per_s']:.2f}"
        ratio = f"{row['bytes_ratio']:.2f}" if "bytes_ratio" in row else "1.00"
        print(f"  {label:46} {mbps:>9} {row['seconds']:>9.3f} {ratio:>13}")
    targets = {
        "connect_median_s<=2": bool(connect["n"]) and connect["median_s"] <= TARGET_MEDIAN_S,
        "all_relayed": kinds == ["relayed"],
    }
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    info["loadavg_end"] = list(os.getloadavg())
    out_data = {
        "machine": info,
        "params": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "summary": {"connect": connect, "throughput": tp},
        "trials": result["trials"],
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(out_data, indent=2) + "\n", encoding="utf-8")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode")
    run = sub.add_parser("run", help="the benchmark (default)")
    for p in (parser, run):
        p.add_argument("--trials", type=int, default=20)
        p.add_argument("--messages", type=int, default=16)
        p.add_argument("--timeout", type=float, default=900)
        p.add_argument("--out", type=Path, default=ROOT / "results" / "relay.json")
    c = sub.add_parser("child", help="internal: one device in its namespace")
    c.add_argument("--role", choices=("home", "a", "b"), required=True)
    c.add_argument("--home", required=True)
    c.add_argument("--home-addr", required=True)
    c.add_argument("--turn", required=True)
    c.add_argument("--peer-b", default="")
    c.add_argument("--peer-h", default="")
    c.add_argument("--trials", type=int, default=20)
    c.add_argument("--messages", type=int, default=16)
    args = parser.parse_args()
    if args.mode == "child":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        if os.environ.get("BENCH_DEBUG"):
            logging.getLogger("kiana").setLevel(logging.INFO)
            logging.getLogger("aioice").setLevel(logging.INFO)
        asyncio.run(child(args))
        return 0
    if args.trials < 10:
        parser.error("--trials must be at least 10")
    return parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
