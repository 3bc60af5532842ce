"""The deterministic mind simulator (``kiana.sync.sim``): many seeds, and that it can fail."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiana.sync.core import CHANNELS, NodeCore
from kiana.sync.engine import SyncEngine
from kiana.sync.sim import Faults, Simulation, SimulationFailure, main
from kiana.sync.sim_mind import MindCache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> MindCache:
    return MindCache(tmp_path_factory.mktemp("minds"))


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    # The rogue's input is refused with a warning per message; keep the test log short.
    logger = logging.getLogger("kiana")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def run_seeds(cache: MindCache, seeds: range, **kwargs: object) -> list[str]:
    failures = []
    for seed in seeds:
        try:
            Simulation(seed, cache=cache, **kwargs).run()  # type: ignore[arg-type]
        except SimulationFailure as exc:
            failures.append(str(exc))
    return failures


def test_small_minds_converge_over_many_seeds(cache: MindCache) -> None:
    assert run_seeds(cache, range(1, 151), nodes=3, steps=25) == []


@pytest.mark.parametrize(
    ("nodes", "authorities", "rogue"), [(4, 2, False), (5, 1, True), (4, 2, True)]
)
def test_larger_minds_with_a_second_authority_and_a_rogue(
    cache: MindCache, nodes: int, authorities: int, rogue: bool
) -> None:
    seeds = range(1000 * nodes + 10 * authorities, 1000 * nodes + 10 * authorities + 15)
    failures = run_seeds(cache, seeds, nodes=nodes, steps=40, authorities=authorities, rogue=rogue)
    assert failures == []


def test_a_harsh_network_still_converges(cache: MindCache) -> None:
    harsh = Faults(drop=0.3, dup=0.2, delay_ms=(1, 400), partition=0.1, crash=0.05)
    assert run_seeds(cache, range(500, 510), nodes=4, steps=40, faults=harsh) == []


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~40 s alone; a correctness check, not a timed one (loaded CI: 120 s+)
def test_long_runs(cache: MindCache) -> None:
    failures = run_seeds(cache, range(7000, 7010), nodes=5, steps=300, authorities=2, rogue=True)
    assert failures == []


def test_a_core_that_drops_tombstones_fails_with_a_replay_line(
    cache: MindCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SyncEngine, "_store_tombstone", lambda self, state, tomb: None)
    with pytest.raises(SimulationFailure) as caught:
        for seed in range(1, 30):
            Simulation(seed, cache=cache, nodes=3, steps=40).run()
    message = str(caught.value)
    assert "tombstone" in message
    last = message.splitlines()[-1]
    assert last.startswith("replay: python -m kiana.sync.sim --seed ")
    assert "--nodes 3 --steps 40" in last


def test_a_core_that_loses_ledger_records_fails(
    cache: MindCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiana.sync.ledger_gossip import LedgerGossip

    monkeypatch.setattr(LedgerGossip, "_on_records", lambda self, raw: [])
    with pytest.raises(SimulationFailure, match="not committed"):
        for seed in range(1, 30):
            Simulation(seed, cache=cache, nodes=3, steps=40).run()


def test_a_crash_inside_a_core_is_reported_with_the_replay_line(
    cache: MindCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: NodeCore, peer: str, channel: str, body: bytes, now: int) -> list[object]:
        raise RuntimeError("core bug")

    monkeypatch.setattr(NodeCore, "handle", boom)
    with pytest.raises(SimulationFailure, match=r"RuntimeError: core bug\nreplay: python -m"):
        Simulation(3, cache=cache, nodes=3, steps=10).run()


def test_the_same_seed_runs_the_same_way(cache: MindCache) -> None:
    a = Simulation(42, cache=cache, nodes=3, steps=30).run()
    b = Simulation(42, cache=cache, nodes=3, steps=30).run()
    assert (a.frames, a.messages, a.writes, a.crashes, a.virtual_ms) == (
        b.frames,
        b.messages,
        b.writes,
        b.crashes,
        b.virtual_ms,
    )


def test_cli_runs_a_range_and_reports_seeds_per_minute(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["--seed", "5", "--seeds", "3", "--steps", "15"]) == 0
    out = capsys.readouterr().out
    assert "3 seed(s), 0 failed" in out and "seeds/minute" in out


def test_core_channels() -> None:
    assert CHANNELS == ("sync", "state", "ledger")
