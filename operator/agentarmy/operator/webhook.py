"""The validating webhook's HTTPS server, one per operator replica.

Every replica serves the same certificate (a Secret mounted as files, made by
cert-manager, the chart or the devcluster's CA), so the API server may call
any of them through one Service. The files are checked every few seconds and
loaded into the live TLS context when their bytes change: a rotated Secret is
served from the next handshake on, without a restart.

Not kopf's webhook server: kopf's managed mode rewrites the webhook
configuration per replica (docs/policy.md says why that breaks with two).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from lightkube import AsyncClient

from agentarmy.operator.admission import BadReview, Body, answer
from agentarmy.operator.kube import Kube
from agentarmy.operator.policywatch import PolicyCatalog

log = logging.getLogger("agentarmy.operator.webhook")

PATH = "/validate"
MAX_BODY = 3 * 1024 * 1024
"""The API server caps an object at about 1.5 MiB; a review holds two of them."""


@dataclass(frozen=True)
class WebhookConfig:
    address: str
    port: int
    cert_file: Path
    key_file: Path
    reload_seconds: float


class ReloadingCertificate:
    """An SSLContext whose certificate follows the files it was loaded from."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._fingerprint = ""
        self.reload()

    def _read(self) -> str:
        digest = hashlib.sha256(self.cert_file.read_bytes() + self.key_file.read_bytes())
        return digest.hexdigest()

    def reload(self) -> bool:
        """Load the files if they changed; True when a new certificate is in use."""
        fingerprint = self._read()
        if fingerprint == self._fingerprint:
            return False
        # New handshakes use the new chain; connections already open keep theirs.
        self.context.load_cert_chain(str(self.cert_file), str(self.key_file))
        self._fingerprint = fingerprint
        return True

    async def follow(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                if self.reload():
                    log.info("serving a new webhook certificate from %s", self.cert_file)
            except (OSError, ssl.SSLError) as err:
                # Mid-rotation (cert and key written apart) or unreadable: keep the old one.
                log.warning("webhook certificate not reloaded (keeping the current one): %s", err)


async def start_webhook(
    config: WebhookConfig, catalog: PolicyCatalog, client: AsyncClient
) -> tuple[web.AppRunner, asyncio.Task[None]]:
    """Serve AdmissionReviews on ``config.port``; returns the runner and the reload task."""
    certificate = ReloadingCertificate(config.cert_file, config.key_file)

    kube = Kube(client)

    async def fleet(namespace: str, name: str) -> Body | None:
        return await kube.get("Fleet", namespace, name)

    async def validate(request: web.Request) -> web.Response:
        if not catalog.synced.is_set():
            # Fail closed (the configuration says Fail) rather than admit unseen Policies.
            return web.Response(status=503, text="Policies not loaded yet")
        try:
            review = json.loads(await request.read())
            response = await answer(review, catalog.policy_set, fleet)
        except (ValueError, BadReview) as err:
            return web.Response(status=400, text=f"bad AdmissionReview: {err}")
        return web.json_response(response)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(PATH, validate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # reuse_port: replicas on one host (the devcluster) share the port; the kernel spreads
    # connections over them, and one that dies leaves the others serving.
    site = web.TCPSite(
        runner, config.address, config.port, ssl_context=certificate.context, reuse_port=True
    )
    await site.start()
    follower = asyncio.create_task(certificate.follow(config.reload_seconds))
    return runner, follower
