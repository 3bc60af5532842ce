from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kiana.config import load_settings
from kiana.errors import BadSignatureError, HomeError
from kiana.home import HomeLayout, initialise_home, load_identity, read_token
from kiana.identity import DeviceKeys, device_id_for, make_genesis, parse_genesis
from kiana.identity.mind import new_person_id


def test_device_id_is_short_stable_fingerprint() -> None:
    keys = DeviceKeys.generate()
    did = keys.device_id
    assert did == device_id_for(keys.sign_public)
    parts = did.split("-")
    assert len(parts) == 4 and all(len(p) == 4 for p in parts)
    assert DeviceKeys.generate().device_id != did


def test_keys_saved_private_and_reloaded(tmp_path: Path) -> None:
    keys = DeviceKeys.generate()
    path = tmp_path / "keys" / "device.json"
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = DeviceKeys.load(path)
    assert loaded.sign_public == keys.sign_public and loaded.box_public == keys.box_public
    with pytest.raises(HomeError, match="refusing to overwrite"):
        DeviceKeys.generate().save(path)
    assert DeviceKeys.load(path).device_id == keys.device_id


def test_keys_readable_by_others_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    DeviceKeys.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(HomeError, match="chmod 600"):
        DeviceKeys.load(path)


@pytest.mark.parametrize("content", [b"", b"{", b'{"sign_seed": "zz"}', b"[]"])
def test_corrupt_keys_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "device.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(HomeError, match="unreadable or corrupt"):
        DeviceKeys.load(path)


def test_keys_with_wrong_recorded_id_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    DeviceKeys.generate().save(path)
    raw = json.loads(path.read_bytes())
    raw["device"] = "aaaa-aaaa-aaaa-aaaa"
    path.write_text(json.dumps(raw))
    with pytest.raises(HomeError, match="do not match"):
        DeviceKeys.load(path)


def test_genesis_roundtrip_and_tamper() -> None:
    keys = DeviceKeys.generate()
    g = make_genesis(keys, name="Family", device_name="laptop", created=1, person=new_person_id())
    data = json.dumps(g.to_dict())
    parsed = parse_genesis(data)
    assert parsed == g and parsed.mind_id.startswith("mind-")
    tampered = g.to_dict()
    tampered["name"] = "Evil"
    with pytest.raises(HomeError, match="mind id"):
        parse_genesis(json.dumps(tampered))
    # Re-computing the mind id does not help without the key.
    forged = dict(tampered)
    from kiana.identity import Genesis

    forged["mind"] = Genesis(
        **{**{s: getattr(g, s) for s in Genesis.__slots__}, "name": "Evil"}
    ).mind_id
    with pytest.raises(BadSignatureError):
        parse_genesis(json.dumps(forged))
    with pytest.raises(HomeError):
        parse_genesis(b"not json")


def test_initialise_home_and_refuse_second_time(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home", environ={})
    keys, genesis = initialise_home(settings, mind_name="M", device_name="d", now=5)
    layout = HomeLayout(settings.home)
    assert stat.S_IMODE(layout.token.stat().st_mode) == 0o600
    assert len(read_token(settings)) >= 32
    assert layout.config.exists()
    before = layout.keys.read_bytes()
    with pytest.raises(HomeError, match="already holds"):
        initialise_home(settings, mind_name="M2", device_name="d", now=6)
    assert layout.keys.read_bytes() == before
    k2, g2 = load_identity(settings)
    assert (k2.device_id, g2.mind_id) == (keys.device_id, genesis.mind_id)


def test_load_identity_before_init(tmp_path: Path) -> None:
    with pytest.raises(HomeError, match="kiana init"):
        load_identity(load_settings(tmp_path, environ={}))
