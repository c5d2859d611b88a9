"""Who is calling: static tokens (outside a cluster) and TokenReview (agent pods in one).

A principal is an admin (everything, e.g. the operator reading stats), a client
(submits and reads tasks, optionally in one namespace), an agent (acts only as
agents of one fleet in one namespace, and only as one named agent when the token
says which) or a metrics reader (reads /metrics and nothing else: a Prometheus scraper).
Authorization checks live next to the principal so they read as rules.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import yaml
from pydantic import Field, TypeAdapter

from agentarmy.api import labels as pod_labels
from agentarmy.api import runtime_env
from agentarmy.api.common import DNSLabel, Model
from agentarmy.router.errors import forbidden

log = logging.getLogger(__name__)

Role = Literal["admin", "client", "agent", "metrics"]


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    namespace: str | None = None
    """Agents: their namespace. Clients: the only namespace they may use (None: any)."""
    fleet: str | None = None
    agent: str | None = None
    """Agents: the one Agent they are (from the pod's label), or None for any agent of the fleet."""

    def check_caller(self, namespace: str) -> None:
        """May this principal submit, read or cancel tasks in ``namespace``?"""
        if self.role == "agent":
            raise forbidden(f"{self.name} is an agent; agents hand off work through their lease")
        if self.role == "metrics":
            raise forbidden(f"{self.name} is a metrics reader; it may read /metrics only")
        if self.role == "client" and self.namespace is not None and namespace != self.namespace:
            raise forbidden(
                f"{self.name} may only use namespace {self.namespace!r}, not {namespace!r}"
            )

    def check_agent(self, namespace: str, name: str, fleet: str) -> None:
        """May this principal act as agent ``namespace/name`` of ``fleet``?"""
        if self.role != "agent":
            raise forbidden(
                f"{self.name} is not an agent; only agent tokens may register and claim"
            )
        if namespace != self.namespace or fleet != self.fleet:
            raise forbidden(
                f"{self.name} may act only for fleet {self.fleet!r} in namespace {self.namespace!r}, "
                f"not fleet {fleet!r} in {namespace!r}"
            )
        if self.agent is not None and name != self.agent:
            raise forbidden(f"{self.name} may act only as agent {self.agent!r}, not {name!r}")

    def check_admin(self) -> None:
        if self.role != "admin":
            raise forbidden(f"{self.name} is not an admin")

    def check_metrics(self) -> None:
        """May this principal read /metrics? Admins and metrics readers: the figures name
        every namespace's fleets, so a client of one namespace or an agent may not."""
        if self.role not in ("admin", "metrics"):
            raise forbidden(
                f"{self.name} (role {self.role}) may not read /metrics: it is for admin and"
                " metrics tokens (a static token of role metrics, or a ServiceAccount given"
                " by --metrics-sa)"
            )


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal | None: ...


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StaticToken(Model):
    token: str = Field(min_length=16, description="The bearer token (at least 16 characters).")
    name: str = Field(min_length=1, max_length=253)
    role: Role
    namespace: DNSLabel | None = None
    fleet: DNSLabel | None = None
    agent: DNSLabel | None = None


class StaticTokens:
    """Tokens from a YAML file: a list of {token, name, role, namespace?, fleet?, agent?}."""

    def __init__(self, entries: Sequence[StaticToken]) -> None:
        for entry in entries:
            if entry.role == "agent" and (entry.namespace is None or entry.fleet is None):
                raise ValueError(f"token {entry.name!r}: agent tokens need a namespace and a fleet")
            if entry.role == "metrics" and (entry.namespace or entry.fleet or entry.agent):
                raise ValueError(
                    f"token {entry.name!r}: metrics tokens read every fleet's figures;"
                    " give them no namespace, fleet or agent"
                )
        self._by_digest = {
            _digest(e.token): Principal(e.name, e.role, e.namespace, e.fleet, e.agent)
            for e in entries
        }

    @classmethod
    def from_file(cls, path: Path) -> StaticTokens:
        raw = yaml.safe_load(path.read_text()) or []
        return cls(TypeAdapter(list[StaticToken]).validate_python(raw))

    async def authenticate(self, token: str) -> Principal | None:
        return self._by_digest.get(_digest(token))


@dataclass(frozen=True)
class KubeAccess:
    """How the router reaches the Kubernetes API server."""

    server: str
    ca_file: str | None = None
    bearer_token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None

    @classmethod
    def in_cluster(cls) -> KubeAccess:
        root = Path("/var/run/secrets/kubernetes.io/serviceaccount")
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(f"https://{host}:{port}", str(root / "ca.crt"), str(root / "token"))

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert_file:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context

    def headers(self) -> dict[str, str]:
        if self.bearer_token_file:  # re-read: projected tokens rotate
            return {"Authorization": f"Bearer {Path(self.bearer_token_file).read_text().strip()}"}
        return {}


class TokenReviewer:
    """Checks ServiceAccount tokens with the API server, then maps the pod to its fleet.

    The token must be issued for ``audience`` and bound to a pod; the pod's
    ``agentarmy.io/fleet`` (and ``agentarmy.io/agent``) labels, set by the operator,
    say which fleet it may serve. ServiceAccounts in ``admins`` (``namespace:name``)
    are admins (the operator reading stats), those in ``clients`` clients of their
    namespace, those in ``metrics`` metrics readers (a Prometheus scraper). Answers are
    cached briefly.
    """

    def __init__(
        self,
        kube: KubeAccess,
        audience: str = runtime_env.TOKEN_AUDIENCE,
        admins: Sequence[str] = (),
        clients: Sequence[str] = (),
        cache_seconds: float = 60.0,
        metrics: Sequence[str] = (),
    ) -> None:
        self.kube = kube
        self.audience = audience
        self.admins = frozenset(admins)
        self.clients = frozenset(clients)
        self.metrics = frozenset(metrics)
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.kube.ssl_context())
            self._session = aiohttp.ClientSession(
                base_url=self.kube.server,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=10),
            )
        return self._session

    async def authenticate(self, token: str) -> Principal | None:
        key = _digest(token)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self._review(token)
        # Refusals are remembered only briefly, so a just-created pod is not locked out.
        self._cache[key] = (now + (self.cache_seconds if principal else 5.0), principal)
        return principal

    async def _review(self, token: str) -> Principal | None:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        async with self._client().post(
            "/apis/authentication.k8s.io/v1/tokenreviews", json=review, headers=self.kube.headers()
        ) as response:
            response.raise_for_status()
            status: dict[str, Any] = (await response.json()).get("status", {})
        if not status.get("authenticated") or self.audience not in status.get("audiences", []):
            return None
        user = status.get("user", {})
        username: str = user.get("username", "")
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        namespace, account = parts[2], parts[3]
        if f"{namespace}:{account}" in self.admins:
            return Principal(username, "admin")
        if f"{namespace}:{account}" in self.clients:
            return Principal(username, "client", namespace=namespace)
        if f"{namespace}:{account}" in self.metrics:
            return Principal(username, "metrics")
        return await self._agent_from_pod(username, namespace, user.get("extra", {}))

    async def _agent_from_pod(
        self, username: str, namespace: str, extra: dict[str, list[str]]
    ) -> Principal | None:
        pod_names = extra.get("authentication.kubernetes.io/pod-name", [])
        pod_uids = extra.get("authentication.kubernetes.io/pod-uid", [])
        if not pod_names:
            log.info("token of %s is not bound to a pod; refusing it as an agent", username)
            return None
        async with self._client().get(
            f"/api/v1/namespaces/{namespace}/pods/{pod_names[0]}", headers=self.kube.headers()
        ) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            pod: dict[str, Any] = await response.json()
        metadata = pod.get("metadata", {})
        if pod_uids and metadata.get("uid") != pod_uids[0]:
            return None  # a newer pod with the same name; the token belongs to a deleted one
        labels: dict[str, str] = metadata.get("labels", {})
        # A standalone Agent is its own fleet of one (see runtime_env.FLEET).
        fleet = labels.get(pod_labels.FLEET) or labels.get(pod_labels.AGENT)
        if not fleet:
            log.info("pod %s/%s has no %s label", namespace, pod_names[0], pod_labels.FLEET)
            return None
        return Principal(
            username,
            "agent",
            namespace=namespace,
            fleet=fleet,
            agent=labels.get(pod_labels.AGENT),
        )


class AuthChain:
    """Tries each authenticator in turn (static tokens first: no network)."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = list(authenticators)

    async def authenticate(self, token: str) -> Principal | None:
        for authenticator in self.authenticators:
            principal = await authenticator.authenticate(token)
            if principal is not None:
                return principal
        return None
