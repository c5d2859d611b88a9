"""The router's HTTP application, assembled: the endpoint table (:mod:`.endpoints`) served by
the ASGI layer (:mod:`.asgi`)."""

from __future__ import annotations

from agentarmy.router.asgi import RouterApp
from agentarmy.router.auth import Authenticator
from agentarmy.router.endpoints import ENDPOINTS
from agentarmy.router.service import RouterService


def create_app(service: RouterService, authenticator: Authenticator) -> RouterApp:
    return RouterApp(service, authenticator, ENDPOINTS)
