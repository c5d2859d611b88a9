"""armyctl router: run the router service (task API, store, dispatcher)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agentarmy.api.common import parse_duration


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("router", help="run the router (task API, store, dispatcher)")
    parser.add_argument(
        "--store",
        default="sqlite:///var/lib/agentarmy/router.db",
        help="sqlite:///path.db[?synchronous=full] or nats://host:4222[?prefix=x]",
    )
    parser.add_argument("--listen", default="0.0.0.0:8080", help="host:port to serve on")
    parser.add_argument("--token-file", type=Path, help="YAML list of static tokens")
    parser.add_argument(
        "--token-review",
        action="store_true",
        help="accept ServiceAccount tokens (audience agentarmy-router) via TokenReview",
    )
    parser.add_argument("--kube-server", help="API server URL (default: in-cluster)")
    parser.add_argument("--kube-ca-file")
    parser.add_argument("--kube-token-file", help="bearer token for the API server")
    parser.add_argument("--kube-client-cert")
    parser.add_argument("--kube-client-key")
    parser.add_argument(
        "--admin-sa",
        action="append",
        default=[],
        metavar="NS:NAME",
        help="ServiceAccount treated as admin (e.g. the operator); repeatable",
    )
    parser.add_argument(
        "--client-sa",
        action="append",
        default=[],
        metavar="NS:NAME",
        help="ServiceAccount that may submit tasks in its namespace; repeatable",
    )
    parser.add_argument(
        "--metrics-sa",
        action="append",
        default=[],
        metavar="NS:NAME",
        help="ServiceAccount that may read /metrics and nothing else (a scraper); repeatable",
    )
    parser.add_argument(
        "--lease", default="30s", help="lease length; agents heartbeat well within it"
    )
    parser.add_argument("--retry-backoff", default="1s", help="first retry delay (doubles)")
    parser.add_argument("--retry-backoff-max", default="5m")
    parser.add_argument("--reap-interval", default="500ms")
    parser.add_argument(
        "--routing",
        choices=["results", "least-loaded"],
        help="results: prefer agents that have been succeeding, with circuit breakers; "
        "least-loaded: ignore outcomes (default: env AGENTARMY_ROUTING, else results)",
    )
    parser.add_argument("--tls-cert-file")
    parser.add_argument("--tls-key-file")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    parser.add_argument("--http", choices=["auto", "httptools", "h11"], default="auto")
    parser.set_defaults(handler=_run_router)


def _run_router(args: argparse.Namespace) -> int:
    from agentarmy.logs import configure_json_logging
    from agentarmy.router.auth import KubeAccess
    from agentarmy.router.scoring import mode_from_env
    from agentarmy.router.server import RouterConfig, serve

    configure_json_logging(args.log_level)
    try:
        routing = args.routing or mode_from_env(os.environ)
    except ValueError as error:
        print(f"armyctl router: {error}")
        return 2
    host, _, port = args.listen.rpartition(":")
    kube = None
    if args.kube_server:
        kube = KubeAccess(
            args.kube_server,
            args.kube_ca_file,
            args.kube_token_file,
            args.kube_client_cert,
            args.kube_client_key,
        )
    config = RouterConfig(
        store_url=args.store,
        host=host or "0.0.0.0",
        port=int(port),
        token_file=args.token_file,
        token_review=args.token_review,
        kube=kube,
        admin_service_accounts=args.admin_sa,
        client_service_accounts=args.client_sa,
        metrics_service_accounts=args.metrics_sa,
        lease_seconds=parse_duration(args.lease),
        retry_base_seconds=parse_duration(args.retry_backoff),
        retry_cap_seconds=parse_duration(args.retry_backoff_max),
        reap_interval=parse_duration(args.reap_interval),
        routing=routing,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        loop=args.loop,
        http=args.http,
    )
    serve(config)
    return 0
