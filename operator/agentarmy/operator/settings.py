"""Every knob of the operator in one place: our config (from the environment)
and the kopf settings chosen on purpose."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import kopf

from agentarmy.operator import labels


@dataclass(frozen=True)
class OperatorConfig:
    router_url: str = "http://agentarmy-router.agentarmy-system.svc:8080"
    """Router address handed to every agent pod."""
    router_ca_file: str = ""
    namespace: str = "agentarmy-system"
    """Where the leader Lease lives."""
    lease_name: str = "agentarmy-operator"
    lease_seconds: float = 15.0
    """A standby takes over at most this long (plus one retry) after the leader dies."""
    renew_seconds: float = 5.0
    retry_seconds: float = 2.0
    identity: str = field(
        default_factory=lambda: (
            os.environ.get("POD_NAME") or os.uname().nodename + f"-{os.getpid()}"
        )
    )
    health_address: str = "127.0.0.1"
    health_port: int = 8080
    """/healthz, /readyz and /metrics."""
    router_token_file: str = ""
    """Bearer token for the router's stats (in a pod: a projected ServiceAccount token)."""
    stats_seconds: float = 60.0
    stats_watch: bool = True
    """Long-poll the router's figures (wake from zero within a second); off: the coarse
    stats interval alone (the benchmark's peer)."""
    rules_sync_seconds: float = 60.0
    """How often every fleet's runtime rules are pushed to the router in full (changes go at once)."""
    """How often router figures are copied into Agent and Fleet status."""
    webhook_cert_file: str = ""
    """TLS certificate of the validating webhook; empty: this replica serves no admission."""
    webhook_key_file: str = ""
    webhook_address: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_reload_seconds: float = 10.0
    """How often the certificate files are checked for a rotation."""
    agent_workers: int = 16
    fleet_workers: int = 4
    policy_workers: int = 2
    task_workers: int = 8
    """Tasks reconciled at once (each may wait on one router call)."""

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        defaults = cls()
        return cls(
            router_url=env.get("AGENTARMY_ROUTER_URL", defaults.router_url),
            router_ca_file=env.get("AGENTARMY_ROUTER_CA_FILE", ""),
            router_token_file=env.get("AGENTARMY_ROUTER_TOKEN_FILE", ""),
            stats_seconds=float(env.get("AGENTARMY_STATS_SECONDS", defaults.stats_seconds)),
            stats_watch=_flag(env.get("AGENTARMY_STATS_WATCH", "true"), "AGENTARMY_STATS_WATCH"),
            rules_sync_seconds=float(
                env.get("AGENTARMY_RULES_SYNC_SECONDS", defaults.rules_sync_seconds)
            ),
            namespace=env.get("AGENTARMY_OPERATOR_NAMESPACE", defaults.namespace),
            lease_name=env.get("AGENTARMY_LEASE_NAME", defaults.lease_name),
            lease_seconds=float(env.get("AGENTARMY_LEASE_SECONDS", defaults.lease_seconds)),
            renew_seconds=float(env.get("AGENTARMY_RENEW_SECONDS", defaults.renew_seconds)),
            retry_seconds=float(env.get("AGENTARMY_RETRY_SECONDS", defaults.retry_seconds)),
            identity=env.get("POD_NAME") or defaults.identity,
            health_address=env.get("AGENTARMY_HEALTH_ADDRESS", defaults.health_address),
            health_port=int(env.get("AGENTARMY_HEALTH_PORT", defaults.health_port)),
            webhook_cert_file=env.get("AGENTARMY_WEBHOOK_CERT_FILE", ""),
            webhook_key_file=env.get("AGENTARMY_WEBHOOK_KEY_FILE", ""),
            webhook_address=env.get("AGENTARMY_WEBHOOK_ADDRESS", defaults.webhook_address),
            webhook_port=int(env.get("AGENTARMY_WEBHOOK_PORT", defaults.webhook_port)),
            webhook_reload_seconds=float(
                env.get("AGENTARMY_WEBHOOK_RELOAD_SECONDS", defaults.webhook_reload_seconds)
            ),
        )


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return lowered == "true"


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Events cost API writes: we post our own, only for decisions about a resource.
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    # One active replica is chosen by our Lease (leader.py), not kopf's peering.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Fixed kinds, cluster-wide: no CRD or namespace scanning.
    settings.scanning.disabled = True
    # Only agent pods matter; filter them on the server, not after the wire. (The key is
    # kopf's public shorthand for Selector("v1", "pods"), as in its handler decorators.)
    settings.watching.label_selectors["v1", "pods"] = (
        f"{labels.AGENT},{labels.MANAGED_BY}={labels.MANAGER}"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # No change handlers, so kopf writes no progress or diff-base annotations and
    # adds no finalizers; these stay at their defaults on purpose.
    settings.queueing.worker_limit = None
    return settings
