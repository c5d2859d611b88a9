"""The router's HTTP application, assembled: the endpoint table (:mod:`.endpoints`) served by
the ASGI layer (:mod:`.asgi`)."""

from __future__ import annotations

import os
from typing import Any

from agentarmy.router.asgi import RouterApp
from agentarmy.router.auth import Authenticator
from agentarmy.router.endpoints import ENDPOINTS
from agentarmy.router.service import RouterService


def create_app(service: RouterService, authenticator: Authenticator) -> Any:
    if os.environ.get("AGENTARMY_ROUTER_ASGI") == "starlette":  # MEASUREMENT ONLY
        from agentarmy.router.asgi_starlette import create_starlette_app

        return create_starlette_app(service, authenticator, ENDPOINTS)
    return RouterApp(service, authenticator, ENDPOINTS)
