"""Mesh routes, end to end: two real nodes with real mesh listeners on loopback.

Pairing goes through the API on the inviter and ``join_mind`` (real TCP) on the
joiner; links, messages, pings and revocation go over real sockets.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.api_helpers import ApiClient, error_code, make_home
from tests.mesh_helpers import settings_for
from tests.polling import wait_for

from kiana.api.app import create_app
from kiana.config import Settings
from kiana.mesh.pairing_service import join_mind

pytestmark = pytest.mark.timeout(90)


def mesh_port(api: ApiClient) -> int:
    response = api.get("/api/v1/mesh/peers")
    assert response.status_code == 200, response.text
    port: int = response.json()["port"]
    return port


def pair(inviter: ApiClient, home: Path, name: str, **join: Any) -> tuple[Settings, str]:
    response = inviter.post("/api/v1/mesh/pairing", json={"ttl_s": 60})
    assert response.status_code == 201, response.text
    invite = response.json()
    assert set(invite) == {"code", "nameplate", "expires", "port"}
    assert invite["port"] == mesh_port(inviter) and invite["code"].startswith(
        f"{invite['nameplate']}-"
    )
    settings = settings_for(home, KIANA_MESH_HEARTBEAT_MS="200")
    result = asyncio.run(
        join_mind(
            settings,
            invite["code"],
            address=f"127.0.0.1:{invite['port']}",
            name=name,
            **join,
        )
    )
    state = inviter.get(f"/api/v1/mesh/pairing/{invite['nameplate']}").json()
    assert state["state"] == "joined" and state["device"] == result["device"], state
    return settings, result["device"]


def peer_state(api: ApiClient, device: str) -> str | None:
    for peer in api.get("/api/v1/mesh/peers").json()["peers"]:
        if peer["device"] == device:
            state: str = peer["state"]
            return state
    return None


def test_pair_link_message_ping_and_revoke(tmp_path: Path) -> None:
    settings_a = make_home(tmp_path / "a", KIANA_MESH_HEARTBEAT_MS="200")
    with ApiClient(create_app(settings_a), settings_a) as a:
        me_a = a.get("/api/v1/devices").json()["this_device"]
        settings_b, me_b = pair(a, tmp_path / "b", "phone", new_person="Sam")
        devices = {d["device_id"]: d for d in a.get("/api/v1/devices").json()["devices"]}
        assert set(devices) == {me_a, me_b}
        assert devices[me_b]["role"] == "member" and devices[me_b]["name"] == "phone"
        assert devices[me_b]["person"] != devices[me_a]["person"]  # --as-new-person

        with ApiClient(create_app(settings_b), settings_b) as b:
            # b learned a's address while pairing; it dials by itself.
            wait_for(lambda: peer_state(b, me_a) == "up", what="b links to a")
            wait_for(lambda: peer_state(a, me_b) == "up", what="a sees b")
            [peer] = [p for p in b.get("/api/v1/mesh/peers").json()["peers"]]
            assert peer["link"] == "direct" and peer["bytes_in"] > 0

            sent = b.post(
                "/api/v1/mesh/messages",
                json={"to": me_a, "channel": "app.notes", "text": "hello from b"},
            )
            assert sent.status_code == 202, sent.text
            inbox = wait_for(
                lambda: a.get("/api/v1/mesh/inbox", params={"channel": "app.notes"}).json()[
                    "messages"
                ],
                what="message at a",
            )
            assert [m["text"] for m in inbox] == ["hello from b"]
            assert inbox[0]["sender"] == me_b and inbox[0]["id"] == sent.json()["id"]
            consumed = a.get("/api/v1/mesh/inbox", params={"consume": "true"}).json()
            assert len(consumed["messages"]) == 1
            assert a.get("/api/v1/mesh/inbox").json()["messages"] == []

            fact = b.post("/api/v1/blocks", json={"text": "The boiler service is on 3 June"})
            assert fact.status_code == 201, fact.text
            fact_id = fact.json()["block"]["id"]
            wait_for(lambda: a.get(f"/api/v1/blocks/{fact_id}").status_code == 200, what="synced")
            sync = a.get("/api/v1/sync/status").json()
            [peer_b] = [p for p in sync["peers"] if p["device"] == me_b]
            assert peer_b["received"] >= 1 and peer_b["rejected"] == 0 and peer_b["up"]
            assert sync["items"] >= 1

            ping = a.post(f"/api/v1/mesh/ping/{me_b}")
            assert ping.status_code == 200, ping.text
            assert ping.json()["rtt_ms"] >= 0

            live = {d["device_id"]: d for d in a.get("/api/v1/devices").json()["devices"]}
            assert live[me_b]["state"] == "up" and live[me_b]["link"] == "direct"
            assert live[me_b]["last_seen"] is not None

            revoked = a.post(f"/api/v1/devices/{me_b}/revoke")
            assert revoked.status_code == 200, revoked.text
            wait_for(lambda: peer_state(a, me_b) != "up", what="b cut off")
            # b keeps dialling a and is refused every time.
            time.sleep(1.5)
            assert peer_state(a, me_b) != "up"
            devices = {d["device_id"]: d for d in a.get("/api/v1/devices").json()["devices"]}
            assert devices[me_b]["revoked"] is not None


def test_mesh_routes_reject_bad_input(tmp_path: Path) -> None:
    settings = make_home(tmp_path)
    with ApiClient(create_app(settings), settings) as api:
        me = api.get("/api/v1/devices").json()["this_device"]
        assert mesh_port(api) > 0
        bad_channel = api.post(
            "/api/v1/mesh/messages", json={"to": me, "channel": "a b", "text": "x"}
        )
        assert bad_channel.status_code == 422
        not_app = api.post(
            "/api/v1/mesh/messages", json={"to": me, "channel": "members", "text": "x"}
        )
        assert not_app.status_code == 400 and error_code(not_app) == "invalid_input"
        unknown = api.post(
            "/api/v1/mesh/messages",
            json={"to": "aaaa-bbbb-cccc-dddd", "channel": "app.x", "text": "x"},
        )
        assert unknown.status_code == 400 and error_code(unknown) == "bad_message"
        assert api.get("/api/v1/mesh/pairing/7").status_code == 404
        assert api.get("/api/v1/mesh/pairing/1000").status_code == 422
        assert api.post(f"/api/v1/devices/{me}/revoke").status_code == 400
        assert api.post("/api/v1/devices/not-a-device/revoke").status_code == 422
        assert api.post("/api/v1/mesh/peers", json={"address": "no:port:here"}).status_code == 400
        added = api.post("/api/v1/mesh/peers", json={"address": "127.0.0.1:9"})
        assert added.status_code == 201 and added.json()["address"] == "127.0.0.1:9"
        ping = api.post("/api/v1/mesh/ping/aaaa-bbbb-cccc-dddd")
        assert ping.status_code == 400
        assert api.post("/api/v1/mesh/pairing", json={"ttl_s": 1}).status_code == 422


def test_mesh_can_be_disabled(tmp_path: Path) -> None:
    settings = make_home(tmp_path, KIANA_MESH_ENABLED="0")
    with ApiClient(create_app(settings), settings) as api:
        response = api.get("/api/v1/mesh/peers")
        assert response.status_code == 502 and error_code(response) == "mesh_error"
        assert "mesh.enabled" in response.json()["error"]["message"]
        assert api.get("/api/v1/devices").status_code == 200
