"""Assemble and run a router process: store from a URL, authenticators, HTTP server."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import uvicorn

from agentarmy.router.app import create_app
from agentarmy.router.auth import AuthChain, Authenticator, KubeAccess, StaticTokens, TokenReviewer
from agentarmy.router.lifecycle import RetryPolicy
from agentarmy.router.scoring import RoutingMode, RoutingSettings
from agentarmy.router.service import RouterService, ServiceSettings
from agentarmy.router.store.base import StoreSettings, TaskStore

log = logging.getLogger(__name__)


def open_store(url: str, settings: StoreSettings) -> TaskStore:
    """``sqlite:///abs/path.db[?synchronous=full]`` or ``nats://host:port[,host:port][?prefix=x]``.

    Backends are imported lazily: a SQLite router does not need the NATS client loaded.
    """
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "sqlite":
        from agentarmy.router.store.sqlite import SqliteStore

        path = parts.path if not parts.netloc else f"{parts.netloc}{parts.path}"
        return SqliteStore(path, settings, synchronous=options.get("synchronous", "normal"))
    if parts.scheme in ("nats", "tls"):
        from agentarmy.router.store.nats import NatsStore

        servers = [f"{parts.scheme}://{host}" for host in parts.netloc.split(",")]
        return NatsStore(servers, settings, prefix=options.get("prefix", "agentarmy"))
    raise ValueError(f"unknown store URL {url!r}: use sqlite:///path.db or nats://host:4222")


@dataclass
class RouterConfig:
    store_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None
    token_review: bool = False
    kube: KubeAccess | None = None
    admin_service_accounts: list[str] = field(default_factory=list)
    client_service_accounts: list[str] = field(default_factory=list)
    metrics_service_accounts: list[str] = field(default_factory=list)
    """``namespace:name`` ServiceAccounts that may read /metrics and nothing else."""
    lease_seconds: float = 30.0
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 300.0
    reap_interval: float = 0.5
    routing: RoutingMode = "results"
    """results (prefer agents that succeed; circuit breakers) or least-loaded."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    loop: str = "auto"
    """auto (uvloop when installed), uvloop or asyncio."""
    http: str = "auto"
    """auto (httptools when installed), httptools or h11."""


def build_authenticator(config: RouterConfig) -> Authenticator:
    chain: list[Authenticator] = []
    if config.token_file is not None:
        chain.append(StaticTokens.from_file(config.token_file))
    if config.token_review:
        kube = config.kube or KubeAccess.in_cluster()
        chain.append(
            TokenReviewer(
                kube,
                admins=config.admin_service_accounts,
                clients=config.client_service_accounts,
                metrics=config.metrics_service_accounts,
            )
        )
    if not chain:
        raise ValueError("no way to authenticate callers: give --token-file and/or --token-review")
    return AuthChain(chain)


def build_service(config: RouterConfig) -> RouterService:
    settings = StoreSettings(
        lease_seconds=config.lease_seconds,
        liveness_seconds=max(60.0, 2 * config.lease_seconds),
        retry=RetryPolicy(config.retry_base_seconds, config.retry_cap_seconds),
    )
    store = open_store(config.store_url, settings)
    service_settings = ServiceSettings(
        reap_interval=config.reap_interval, routing=RoutingSettings(mode=config.routing)
    )
    return RouterService(store, service_settings)


def serve(config: RouterConfig) -> None:
    service = build_service(config)
    app = create_app(service, build_authenticator(config))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            loop=_best_loop() if config.loop == "auto" else config.loop,
            http=_best_http() if config.http == "auto" else config.http,
            timeout_graceful_shutdown=5,
            ssl_certfile=config.tls_cert_file,
            ssl_keyfile=config.tls_key_file,
            limit_concurrency=None,
            backlog=4096,
            # Longer than our client keeps idle connections (router.http.IDLE_SECONDS, 15 s)
            # and than an agent's heartbeat interval (10 s): the client closes first, so it
            # never reuses a connection the router is closing, and heartbeats reuse theirs.
            timeout_keep_alive=75,
            # The router reads no client address, so uvicorn's X-Forwarded-For layer would
            # only cost time on every call.
            proxy_headers=False,
        )
    )
    log.info(
        "router listening on %s:%d with store %s, routing by %s",
        config.host,
        config.port,
        config.store_url,
        config.routing,
    )
    server.run()


def _best_loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _best_http() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"
