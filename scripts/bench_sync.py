#!/usr/bin/env python3
"""Sync reliability and speed at scale, against a real local Mosquitto: prints figures and writes JSON.

Scenarios (the same ones tests/sync runs small):
  reconnect      a kiosk offline while HQ changes 1 / 100 / 10,000 products: time to converge after reconnect,
                 and search availability + p99 latency on the kiosk while it syncs
  snapshot       snapshot size and transfer+apply time for 10k and 100k products
  chaos          hundreds of deltas shuffled and duplicated, a gap, replays: wrong applies must be 0
  forgeries      forged / tampered / foreign-fleet / replayed updates: accepted must be 0
  kill           kill -9 of a kiosk process at random moments during apply (>= 200 trials): inconsistent DBs must be 0
  fleet          50 kiosk clients on one broker converging on a 10k-product update
  amplification  resync requests from one kiosk (duplicate chunk indices, many from_versions): bytes HQ sends
                 per request byte, and what another kiosk receives of it (issue 13, item 8)
  oversize       HQ on the example broker limits after 25 oversized enrollments: does the next one arrive, how
                 fast; a kiosk on a smaller receive limit than HQ's chunks: time to converge after HQ
                 republishes in smaller chunks, across two restarts (items 6, 7)
  disk_full      a kiosk whose writes fail (ENOSPC) while HQ publishes 6 versions: time to converge after space
                 returns, without a restart (item 9)

The last three use only APIs that the previous release has too, so the same scenario can be run on both:
--before FIGURES.json pairs each scenario's figures with that file's as {"before": ..., "after": ...}, and
--merge keeps the other scenarios already in --json.

Usage:
  .venv/bin/python scripts/bench_sync.py --json out/bench_sync.json
  .venv/bin/python scripts/bench_sync.py --quick --json out/bench_sync_quick.json   # smaller, ~1 minute
  .venv/bin/python scripts/bench_sync.py --only amplification oversize disk_full \
      --before out/sync_previous.json --merge --json docs/benchmarks/sync.json
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "sync"))  # the test harness: HQ, kiosks, taps, kill trials

from benchinfo import write_report  # noqa: E402

from shelfsight.catalog.hq.inbox import EnrollmentInbox  # noqa: E402
from shelfsight.catalog.store import Catalog  # noqa: E402
from shelfsight.catalog.sync.codec import encode_delta  # noqa: E402
from shelfsight.catalog.sync.envelope import EnvelopeHeader, generate_keys, load_signer  # noqa: E402
from shelfsight.edge_app.kiosk.updates.releases import seed_release  # noqa: E402
from shelfsight.edge_app.kiosk.updates.state import SyncState  # noqa: E402
from shelfsight.edge_app.kiosk.updates.worker import KioskSync  # noqa: E402
from tests.support.broker import Broker, example_limits  # noqa: E402
from tests.support.sync import (  # noqa: E402
    Hq,
    RunningServer,
    Searcher,
    Tap,
    check_kiosk_catalog,
    kill_trials,
    kiosk_config,
    run_fleet,
    seed_kiosk,
)

DIM = 128  # a realistic embedding size for the benchmark (tests use 16)
WAIT = 600.0


class Bench:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.quick = quick
        private, self.public = generate_keys(work / "keys")
        self.signer = load_signer(private)
        self.broker = Broker(work / "broker", max_queued_messages=1000, max_packet_size=1024 * 1024).start()
        self.count = 0

    def hq(self, name: str, products: int = 0) -> Hq:
        """An HQ with a master of `products` products, published once if there are any."""
        hq = Hq(self.work / name, self.broker, self.signer, chunk_bytes=192 * 1024, dim=DIM)
        if products:
            hq.add(range(products))
            hq.publisher.publish()
        return hq

    def kiosk(self, hq: Hq, name: str, **hooks: Any) -> KioskSync:
        data_dir = self.work / "kiosks" / name
        if not data_dir.exists():
            seed_kiosk(data_dir, hq)
        return KioskSync(kiosk_config(self.broker, self.public, name, hold_s=2.0), data_dir, **hooks)

    def close(self) -> None:
        self.broker.stop()


def converge(kiosk: KioskSync, version: int) -> float:
    start = time.monotonic()
    if not kiosk.wait_for(lambda k: k.version == version, WAIT):
        raise RuntimeError(f"{kiosk.config.kiosk_id} did not converge on v{version}: {kiosk.last_error}")
    return time.monotonic() - start


def wrong_apply(kiosk: KioskSync, hq: Hq) -> int:
    """1 if the kiosk's catalog differs from HQ's at the same version (a wrong apply), else 0."""
    try:
        check_kiosk_catalog(kiosk.data_dir, {hq.catalog.version: hq.catalog.export_snapshot()["records"]})
    except AssertionError:
        return 1
    return 0


def scenario_reconnect(b: Bench) -> dict[str, Any]:
    hq = b.hq("hq-reconnect", 2000 if b.quick else 20000)
    server = RunningServer(hq, b.signer, poll_s=0.5)
    results: dict[str, Any] = {"catalog_products": hq.catalog.stats().get("products")}
    wrong = 0
    try:
        kiosk = b.kiosk(hq, "reconnect")
        for changed in (1, 100, 1000 if b.quick else 10000):
            kiosk.start()
            converge(kiosk, hq.catalog.version)
            kiosk.stop()
            hq.add(range(changed), seed=changed)
            hq.publisher.publish()
            server.server.published.clear()
            searcher = Searcher(kiosk.data_dir)
            kiosk = KioskSync(kiosk.config, kiosk.data_dir, on_applied=searcher.on_applied)
            kiosk.start()
            seconds = converge(kiosk, hq.catalog.version)
            search = searcher.stop()
            wrong += wrong_apply(kiosk, hq)
            results[f"changed_{changed}"] = {
                "seconds": round(seconds, 3),
                "path": "snapshot" if kiosk.counters["snapshots"] else "delta",
                "search_availability": round(search["availability"], 5),
                "search_p99_ms": round(search["p99_ms"], 2),
                "searches": search["searches"],
            }
            kiosk.stop()
            kiosk = KioskSync(kiosk.config, kiosk.data_dir)
    finally:
        server.stop()
        hq.close()
    results["wrong_applies"] = wrong
    return results


def scenario_snapshot(b: Bench) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for products in (2000, 10000) if b.quick else (10000, 100000):
        hq = b.hq(f"hq-snap-{products}")
        start = time.monotonic()
        hq.add(range(products))
        build_s = time.monotonic() - start
        data_dir = _seed_empty(hq, b.work / "kiosks" / f"snap-{products}")
        start = time.monotonic()
        manifest = hq.publisher.publish()
        publish_s = time.monotonic() - start
        assert manifest is not None
        kiosk = KioskSync(kiosk_config(b.broker, b.public, f"snap{products}", hold_s=2.0), data_dir)
        kiosk.start()
        seconds = converge(kiosk, hq.catalog.version)
        results[f"products_{products}"] = {
            "snapshot_bytes": manifest.snapshot.size,
            "chunks": len(manifest.snapshot.chunks),
            "hq_build_catalog_s": round(build_s, 2),
            "hq_publish_s": round(publish_s, 2),
            "kiosk_transfer_and_apply_s": round(seconds, 2),
            "wrong_applies": wrong_apply(kiosk, hq),
        }
        kiosk.stop()
        hq.close()
    return results


def _seed_empty(hq: Hq, data_dir: Path) -> Path:
    """A kiosk with HQ's model and an empty catalog at version 0: everything must come by snapshot."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    empty_db = data_dir.parent / f"{data_dir.name}-empty.db"
    snapshot = hq.catalog.export_snapshot()
    snapshot.update(records=[], version=0)
    with Catalog(empty_db) as catalog:
        catalog.replace_with_snapshot(snapshot)
    seed_release(data_dir, hq.model, empty_db)
    return data_dir


def scenario_chaos(b: Bench) -> dict[str, Any]:
    """Deltas shuffled in blocks, replayed, and one lost (gap -> snapshot); the kiosk must end exactly at HQ's version."""
    hq = b.hq("hq-chaos", 50)
    kiosk = b.kiosk(hq, "chaos")
    steps = 50 if b.quick else 200
    tap = Tap(b.broker, hq.topics.delta, client_id="chaos-tap")
    for step in range(steps):
        hq.add([step % 50], seed=step + 1)
        hq.publisher.publish()
    tap.wait(lambda ms: len(ms) >= steps, 60)
    deltas = tap.payloads(hq.topics.delta)
    rng = np.random.default_rng(1)
    lost = len(deltas) // 2
    order: list[int] = []
    for start in range(0, len(deltas), 10):  # shuffled within blocks of 10, each block followed by replays
        block = list(range(start, min(start + 10, len(deltas))))
        order += [int(i) for i in rng.permutation(block)] + [int(i) for i in rng.choice(block, 5)]
    order = [i for i in order if i != lost]
    kiosk.start()
    kiosk.wait_for(lambda k: k.target_version == hq.catalog.version, 60)  # subscribed
    for index in order:
        tap.inject(hq.topics.delta, deltas[int(index)])
    seconds = converge(kiosk, hq.catalog.version)
    result = {
        "deltas": len(deltas),
        "messages_injected": len(order),
        "seconds": round(seconds, 2),
        "applied": kiosk.counters["applied"],
        "duplicates_ignored": kiosk.counters["duplicates"],
        "held_out_of_order": kiosk.counters["held"],
        "snapshots": kiosk.counters["snapshots"],
        "wrong_applies": wrong_apply(kiosk, hq),
    }
    kiosk.stop()
    tap.close()
    hq.close()
    return result


def scenario_forgeries(b: Bench) -> dict[str, Any]:
    hq = b.hq("hq-forge", 20)
    kiosk = b.kiosk(hq, "forge")
    kiosk.start()
    converge(kiosk, hq.catalog.version)
    base = hq.catalog.version
    changes = hq.catalog.changes_since(base - 2)
    changes = [{**c, "version": base + 1 + i} for i, c in enumerate(changes)]
    other = load_signer(generate_keys(b.work / "attacker-keys")[0])
    genuine = b.signer.seal(
        EnvelopeHeader(kind="delta", fleet="other", seq=1, base=base, target=changes[-1]["version"]),
        encode_delta(changes),
    )
    rng = np.random.default_rng(2)
    attempts = 200 if b.quick else 2000
    tap = Tap(b.broker, client_id="forger")
    for i in range(attempts):
        kind = i % 4
        header = EnvelopeHeader(kind="delta", fleet=hq.topics.fleet, seq=i, base=base, target=changes[-1]["version"])
        if kind == 0:
            payload = other.seal(header, encode_delta(changes))  # wrong key
        elif kind == 1:
            tampered = bytearray(b.signer.seal(header, encode_delta(changes)))
            tampered[int(rng.integers(8, len(tampered)))] ^= 1 << int(rng.integers(0, 8))
            payload = bytes(tampered)  # one bit flipped anywhere
        elif kind == 2:
            payload = genuine  # valid signature, another fleet
        else:
            payload = bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), np.uint8))  # noise
        tap.inject(hq.topics.delta, payload)
    kiosk.wait_for(lambda k: k.counters["refused"] >= attempts, 120)
    result = {
        "attempts": attempts,
        "refused": kiosk.counters["refused"],
        "accepted": kiosk.counters["applied"],
        "catalog_changed": int(kiosk.version != base),
    }
    kiosk.stop()
    tap.close()
    hq.close()
    return result


def scenario_kill(b: Bench, trials: int) -> dict[str, Any]:
    hq = b.hq("hq-kill", 200)
    hq.publisher.max_message_bytes = 64 * 1024  # every 4th (big) step goes by snapshot
    data_dir = b.work / "kiosks" / "kill"
    seed_kiosk(data_dir, hq)
    config = kiosk_config(b.broker, b.public, "kill-victim", hold_s=0.5)
    inconsistent = 0
    try:
        figures = kill_trials(hq, config, data_dir, trials, seed=3, products_per_step=100)
    except AssertionError as exc:
        inconsistent = 1
        figures = {"trials": trials, "error": str(exc)}
    figures["inconsistent"] = inconsistent
    hq.close()
    return figures


def scenario_fleet(b: Bench, kiosks: int) -> dict[str, Any]:
    hq = b.hq("hq-fleet", 1000 if b.quick else 10000)
    server = RunningServer(hq, b.signer, poll_s=0.5)
    try:
        return run_fleet(
            hq, b.broker, b.public, b.work / "fleet", kiosks=kiosks, changed=1000 if b.quick else 10000, timeout=WAIT
        )
    finally:
        server.stop()
        hq.close()


def _settle(tap: Tap, quiet_s: float = 1.5, limit_s: float = 120.0) -> None:
    """Wait until `tap` has seen nothing new for `quiet_s` (HQ has finished answering)."""
    deadline = time.monotonic() + limit_s
    seen = -1
    while time.monotonic() < deadline and seen != len(tap.messages):
        seen = len(tap.messages)
        time.sleep(quiet_s)


def _bytes(tap: Tap) -> int:
    return sum(len(m.payload) for m in tap.messages)


def scenario_amplification(b: Bench) -> dict[str, Any]:
    """One kiosk's resync requests: what HQ sends for them, and what reaches another kiosk of the fleet."""
    hq = b.hq("hq-amp", 400 if b.quick else 2000)
    state = hq.publisher.load_state()
    assert state is not None and state.snapshot is not None
    blob, chunks = state.snapshot.blob_id, len(state.snapshot.chunks)
    root = hq.topics.root
    server = RunningServer(hq, b.signer, poll_s=0.5)
    everything = Tap(b.broker, f"{root}/#", client_id="amp-all")
    # Another kiosk: what it subscribes to while fetching that snapshot (+ its own replies, on this release).
    bystander = Tap(b.broker, hq.topics.delta, client_id="amp-bystander")
    bystander.bus.subscribe(f"{root}/catalog/blob/{blob}/+")
    bystander.bus.subscribe(f"{root}/reply/bystander/#")
    attacker = Tap(b.broker, client_id="attacker")
    results: dict[str, Any] = {"snapshot_chunks": chunks, "chunk_bytes": state.snapshot.chunk_size}
    try:
        _settle(everything)
        for name, requests in (
            ("chunk_requests", [{"blob_id": blob, "chunks": [i % chunks for i in range(256)]}] * 5),
            ("delta_requests", [{"from_version": v} for v in range(1, 61)]),
        ):
            everything.messages.clear()
            bystander.messages.clear()
            sent = 0
            for request in requests:
                payload = json.dumps({"kiosk_id": "attacker", **request}).encode()
                sent += len(payload)
                attacker.inject(hq.topics.resync("attacker"), payload)
            _settle(everything)
            answered = sum(len(m.payload) for m in everything.messages if "/resync/" not in m.topic)
            results[name] = {
                "requests": len(requests),
                "request_bytes": sent,
                "hq_answer_bytes": answered,
                "amplification": round(answered / sent, 1),
                "other_kiosk_received_bytes": _bytes(bystander),
                "other_kiosk_received_messages": len(bystander.messages),
            }
    finally:
        for tap in (everything, bystander, attacker):
            tap.close()
        server.stop()
        hq.close()
    return results


def _enrollment(kiosk_id: str, fingerprint: str) -> bytes:
    frame = {"embedding": [0.5] * DIM, "fingerprint": fingerprint}
    return json.dumps({"kiosk_id": kiosk_id, "product_id": "taught", "name": "Taught", "frames": [frame]}).encode()


def scenario_oversize(b: Bench) -> dict[str, Any]:
    limits = example_limits()
    broker = Broker(b.work / "broker-example", extra=limits).start()
    results: dict[str, Any] = {"broker": limits}
    try:
        hq = Hq(b.work / "hq-oversize", broker, b.signer, dim=DIM)
        hq.add(range(200))
        hq.publisher.publish()
        inbox = EnrollmentInbox(b.work / "inbox.db")
        server = RunningServer(hq, b.signer, inbox, poll_s=0.5)
        attacker = Tap(broker, client_id="k-attacker")
        try:
            for _ in range(25):
                attacker.inject(hq.topics.enroll("k-attacker"), b"x" * 1_000_000)
            start = time.monotonic()
            attacker.inject(hq.topics.enroll("k-attacker"), _enrollment("k-attacker", hq.fingerprint))
            deadline = start + 30
            while not inbox.entries() and time.monotonic() < deadline:
                time.sleep(0.05)
            results["hq_after_25_oversized"] = {
                "hq_receive_limit": server.publisher._bus._config.max_packet_bytes,  # noqa: SLF001
                "next_enrollment_arrived": bool(inbox.entries()),
                "seconds": round(time.monotonic() - start, 2) if inbox.entries() else None,
                "waited_s": 30,
            }
        finally:
            attacker.close()
            server.stop()
            inbox.close()
        results["kiosk_unreceivable_chunks"] = _kiosk_after_republish(b, hq, broker)
        hq.close()
    finally:
        broker.stop()
    return results


def _kiosk_after_republish(b: Bench, hq: Hq, broker: Broker) -> dict[str, Any]:
    """A kiosk on 266,240-byte packets (the previous default) while HQ publishes 300 KiB chunks."""
    limits = {"max_packet_bytes": 266_240, "max_message_bytes": 256 * 1024}
    data_dir = b.work / "kiosks" / "oversize"
    seed_kiosk(data_dir, hq)
    config = kiosk_config(broker, b.public, "k-small", hold_s=2.0, **limits)
    kiosk = KioskSync(config, data_dir)
    kiosk.start()
    try:
        converge(kiosk, hq.catalog.version)
        hq.publisher.chunk_bytes = 300 * 1024
        hq.publisher.max_message_bytes = 1024  # the snapshot is the only way
        hq.add(range(200, 3000))
        hq.publisher.publish()
        time.sleep(3)
        for _ in range(2):  # two restarts on the same persistent session
            kiosk.stop()
            kiosk = KioskSync(config, data_dir)
            kiosk.start()
            time.sleep(2)
        reported = kiosk.last_error
        hq.publisher.chunk_bytes = 64 * 1024
        start = time.monotonic()
        hq.publisher.publish(force=True)
        converged = kiosk.wait_for(lambda k: k.version == hq.catalog.version, 30)
        return {
            "kiosk_receive_limit": limits["max_packet_bytes"],
            "reported_before_republish": reported,
            "converged_after_republish": converged,
            "seconds": round(time.monotonic() - start, 2) if converged else None,
            "waited_s": 30,
        }
    finally:
        kiosk.stop()


class _FullDisk:
    """Every write of the kiosk's catalog and sync state fails with ENOSPC while `full` (a test seam)."""

    def __init__(self) -> None:
        self.full = False

    def check(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")

    def catalog(self, path: Path) -> Catalog:
        disk = self

        class Full(Catalog):
            def apply_changes(self, *args: Any, **kwargs: Any) -> None:
                disk.check()
                super().apply_changes(*args, **kwargs)

        return Full(path)


def scenario_disk_full(b: Bench) -> dict[str, Any]:
    hq = b.hq("hq-disk", 200)
    server = RunningServer(hq, b.signer, poll_s=0.5)
    disk = _FullDisk()
    original_set, original_hold = SyncState.set, SyncState.hold

    def failing_set(self: SyncState, key: str, value: Any) -> None:
        disk.check()
        original_set(self, key, value)

    def failing_hold(self: SyncState, base: int, target: int, envelope: bytes) -> bool:
        disk.check()
        return original_hold(self, base, target, envelope)

    SyncState.set, SyncState.hold = failing_set, failing_hold  # type: ignore[method-assign]
    kiosk = b.kiosk(hq, "disk", open_catalog=disk.catalog)
    try:
        kiosk.start()
        converge(kiosk, hq.catalog.version)
        disk.full = True
        for step in range(6):
            hq.add([step], seed=step + 1)
            hq.publisher.publish()
        time.sleep(3)
        behind = hq.catalog.version - kiosk.version
        reported = kiosk.last_error
        disk.full = False
        start = time.monotonic()
        converged = kiosk.wait_for(lambda k: k.version == hq.catalog.version, 60)
        return {
            "versions_behind_while_full": behind,
            "status_error_while_full": reported,
            "converged_after_space_returns": converged,
            "seconds": round(time.monotonic() - start, 2) if converged else None,
            "waited_s": 60,
            # A kiosk that did not converge is behind, not wrong: only a converged one is compared.
            "wrong_applies": wrong_apply(kiosk, hq) if converged else 0,
        }
    finally:
        SyncState.set, SyncState.hold = original_set, original_hold  # type: ignore[method-assign]
        kiosk.stop()
        server.stop()
        hq.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--quick", action="store_true", help="Smaller catalogs and fewer trials.")
    parser.add_argument("--kill-trials", type=int, default=None, help="kill -9 trials (default 200, quick 30).")
    parser.add_argument("--kiosks", type=int, default=50, help="Kiosk clients in the fleet simulation.")
    parser.add_argument("--only", nargs="*", help="Run only these scenarios.")
    parser.add_argument("--before", type=Path, help="Figures of the same scenarios on the previous release.")
    parser.add_argument("--merge", action="store_true", help="Keep the other scenarios already in --json.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    trials = args.kill_trials if args.kill_trials is not None else (30 if args.quick else 200)
    scenarios = {
        "reconnect": scenario_reconnect,
        "snapshot": scenario_snapshot,
        "chaos": scenario_chaos,
        "forgeries": scenario_forgeries,
        "kill": lambda b: scenario_kill(b, trials),
        "fleet": lambda b: scenario_fleet(b, args.kiosks),
        "amplification": scenario_amplification,
        "oversize": scenario_oversize,
        "disk_full": scenario_disk_full,
    }
    figures: dict[str, Any] = {"quick": args.quick, "embedding_dim": DIM}
    with tempfile.TemporaryDirectory(prefix="bench_sync_") as tmp:
        bench = Bench(Path(tmp), args.quick)
        try:
            for name, run in scenarios.items():
                if args.only and name not in args.only:
                    continue
                start = time.monotonic()
                figures[name] = run(bench)
                figures[name]["scenario_s"] = round(time.monotonic() - start, 1)
                print(f"{name}: {json.dumps(figures[name])}", flush=True)
        finally:
            bench.close()
    summary: dict[str, Any] = {
        "wrong_applies": sum(int(v.get("wrong_applies", 0)) for v in figures.values() if isinstance(v, dict))
        + sum(int(s.get("wrong_applies", 0)) for s in figures.get("snapshot", {}).values() if isinstance(s, dict)),
    }
    if "forgeries" in figures:
        summary["accepted_forgeries"] = figures["forgeries"]["accepted"]
    if "kill" in figures:
        summary["inconsistent_after_kill9"] = f"{figures['kill']['inconsistent']} of {figures['kill']['trials']}"
    figures["summary"] = summary
    print(f"summary: {json.dumps(summary)}")
    if args.before is not None:
        previous = json.loads(args.before.read_text())
        for name in scenarios:
            if name in figures and name in previous:
                figures[name] = {"before": previous[name], "after": figures[name]}
    if args.json and args.merge and args.json.exists():
        kept = json.loads(args.json.read_text())
        kept.pop("host", None)
        # Merged scenarios say themselves whether they ran --quick (the file's own flag is for the others).
        merged = {k: {**v, "quick": args.quick} for k, v in figures.items() if k in scenarios}
        figures = {**kept, **merged}
    if args.json:
        write_report(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
