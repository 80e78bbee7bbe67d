"""The sidecar's Prometheus metrics, on a private registry (names are part of the contract: DESIGN.md)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["Metrics", "add_process_metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]


def add_process_metrics(registry: CollectorRegistry) -> None:
    """The standard `process_*` metrics (memory, CPU, fds, start time) that dashboards expect, read from
    /proc at scrape time. A private registry has none of the default registry's collectors."""
    ProcessCollector(registry=registry)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        add_process_metrics(r)
        self.reloads = Counter(
            "reload_sidecar_reloads",
            "App reloads by result (success, failed, rolled_back, unconfirmed).",
            ["result"],
            registry=r,
        )
        self.validation_failures = Counter(
            "reload_sidecar_validation_failures",
            "Versions refused by validation (parse, schema, checker, snapshot).",
            registry=r,
        )
        self.rollbacks = Counter("reload_sidecar_rollbacks", "Rollbacks to the last good version.", registry=r)
        self.held = Counter("reload_sidecar_held", "Versions held because a peer reported them failed.", registry=r)
        self.peer_requests = Counter(
            "reload_sidecar_peer_requests", "Peer /status reads made (waves mode; none while idle).", registry=r
        )
        self.promotions = Counter("reload_sidecar_promotions", "Versions made live in the target dir.", registry=r)
        self.last_success = Gauge(
            "reload_sidecar_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload.",
            registry=r,
        )
        self.last_successful = Gauge(
            "reload_sidecar_last_reload_successful",
            "1 if the newest version tried was reloaded and verified; 0 if it failed, even after a good rollback.",
            registry=r,
        )
        self.version = Gauge(
            "reload_sidecar_current_version_info", "The live version (content hash).", ["hash"], registry=r
        )
        self.duration = Histogram(
            "reload_sidecar_reload_duration_seconds",
            "Change seen -> app reloaded and verified.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.ready = Gauge("reload_sidecar_ready", "1 when a proven and healthy version is live.", registry=r)
        self.target_repairs = Counter(
            "reload_sidecar_target_repairs",
            "Times the target dir was found damaged (..data, the version dir or a link) and restored.",
            registry=r,
        )
        self.state_write_failures = Counter(
            "reload_sidecar_state_write_failures",
            "Failed writes of the state file (retried at the next commit or resync).",
            registry=r,
        )
        self.restarts = Counter(
            "reload_sidecar_restarts",
            "App restarts by the restart trigger, by outcome (restarted, killed, failed).",
            ["outcome"],
            registry=r,
        )
        self.proofs = Counter(
            "reload_sidecar_proofs",
            "Proofs of load by kind and result (proven, refused, unconfirmed, failed).",
            ["kind", "result"],
            registry=r,
        )
        for result in ("success", "failed", "rolled_back", "unconfirmed"):
            self.reloads.labels(result)
        for outcome in ("restarted", "killed", "failed"):
            self.restarts.labels(outcome)

    def set_version(self, version: str | None) -> None:
        self.version.clear()
        if version:
            self.version.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
