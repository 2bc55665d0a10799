"""Prometheus `/metrics`: recognition rates, stage latencies, decisions, health and sync lag.

A registry per app (prometheus_client's default one is process-global, and two kiosks in one
test process would share it). Per-frame figures are counted as states arrive, from the
recognition thread; gauges (rates, health, catalog and sync versions) are read from the
kiosk at scrape time, so a scrape always sees the present.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shelfsight.edge_app.recognition.events import Event
from shelfsight.edge_app.recognition.pipeline import STAGES
from shelfsight.edge_app.recognition.state import KioskState
from shelfsight.edge_app.web.service import KioskService

COMPONENTS = ("camera", "catalog", "recognition", "sync")
# Stage latencies on a Pi run from ~0.1 ms (search at 1k) to ~100 ms (an invoke on a busy core).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _KioskGauges(Collector):
    def __init__(self, kiosk: KioskService) -> None:
        self._kiosk = kiosk

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration: the kiosk may not be serving yet

    def collect(self) -> Iterable[Metric]:
        health = self._kiosk.health()
        yield GaugeMetricFamily("shelfsight_fps", "Frames recognised per second (last few seconds)", health["fps"])
        yield GaugeMetricFamily("shelfsight_capture_fps", "Frames captured per second", health["capture_fps"])
        yield GaugeMetricFamily("shelfsight_uptime_seconds", "Seconds since the kiosk started", health["uptime_s"])
        yield GaugeMetricFamily("shelfsight_catalog_version", "Catalog version served", health["catalog_version"] or 0)
        yield GaugeMetricFamily("shelfsight_errors", "Frames or updates that failed since start", health["errors"])
        down = {p["component"] for p in health["problems"] if p["down"]}
        up = GaugeMetricFamily("shelfsight_up", "1 when the component works, 0 when it is down", labels=["component"])
        for component in COMPONENTS:
            up.add_metric([component], 0.0 if component in down else 1.0)
        yield up
        sync = health.get("sync")
        if sync is not None:
            yield GaugeMetricFamily(
                "shelfsight_sync_lag_versions",
                "Catalog versions HQ has published that this kiosk lacks",
                sync["behind"],
            )
            yield GaugeMetricFamily("shelfsight_sync_target_version", "Latest version HQ announced",
                                    sync["target_version"] or 0)  # fmt: skip


class KioskMetrics:
    """The kiosk's Prometheus registry; `observe` is a kiosk listener, `announced` an event subscriber."""

    def __init__(self, kiosk: KioskService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.frames = Counter(
            "shelfsight_frames", "Camera frames recognised, by the frame's own decision", ["decision"],
            registry=self.registry,
        )  # fmt: skip
        self.announcements = Counter(
            "shelfsight_announcements", "Changes of what the kiosk announces, by decision", ["decision"],
            registry=self.registry,
        )  # fmt: skip
        self.searches = Counter(
            "shelfsight_searches", "POST /search requests, by HTTP status", ["status"], registry=self.registry
        )
        self.stages = Histogram(
            "shelfsight_stage_seconds", "Time per pipeline stage per camera frame", ["stage"],
            buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        for decision in ("product", "unknown", "empty"):
            self.frames.labels(decision)  # present from the first scrape, at 0
            self.announcements.labels(decision)
        self.registry.register(_KioskGauges(kiosk))

    def observe(self, state: KioskState) -> None:
        frame = state.frame
        if frame is None:
            return
        self.frames.labels(frame.decision).inc()
        for stage in (*STAGES, "capture"):
            ms = frame.timings.get(stage)
            if ms is not None:
                self.stages.labels(stage).observe(ms / 1000.0)

    def announced(self, event: Event) -> None:
        self.announcements.labels(str(event["decision"])).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
