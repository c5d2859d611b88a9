"""Image references as a registry sees them, and the allow-list test on them.

``python:3.11`` and ``docker.io/library/python:3.11`` are the same image, so
references are normalised the way the container runtime does before a prefix
is compared: a policy that allows ``ghcr.io/acme/`` cannot be passed with a
short name that resolves elsewhere.
"""

from __future__ import annotations

import functools

from agentarmy.policy.globs import MEMO, glob_match, is_literal

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRY = "index.docker.io"
"""Docker Hub's old name; the runtime reads it as ``docker.io``."""


def qualify(reference: str) -> str:
    """The registry a reference implies made explicit: ``acme/x`` -> ``docker.io/acme/x``.

    Only the registry: an allow-list entry such as ``docker.io/acme`` is a prefix
    (the organisation acme), not an image, so it never gains ``library/``.
    """
    first, sep, rest = reference.partition("/")
    if not sep:
        return f"{DEFAULT_REGISTRY}/library/{reference}"
    if first == LEGACY_REGISTRY:
        return f"{DEFAULT_REGISTRY}/{rest}"
    if "." in first or ":" in first or first == "localhost":
        return reference
    return f"{DEFAULT_REGISTRY}/{reference}"


@functools.lru_cache(maxsize=MEMO)
def normalize_image(reference: str) -> str:
    """``busybox``, ``docker.io/busybox`` -> ``docker.io/library/busybox`` (what the runtime pulls).

    Fully qualified names of other registries are unchanged.
    """
    qualified = qualify(reference)
    registry, _, path = qualified.partition("/")
    if registry == DEFAULT_REGISTRY and "/" not in path:
        return f"{DEFAULT_REGISTRY}/library/{path}"
    return qualified


@functools.lru_cache(maxsize=MEMO)
def under(image: str, entry: str) -> bool:
    """Whether normalised ``image`` is allowed by one allow-list entry.

    An entry with wildcards is a glob over the whole reference. A literal entry
    is a prefix that ends on a boundary: ``ghcr.io/acme/`` and ``ghcr.io/acme``
    both allow ``ghcr.io/acme/agent:1`` but never ``ghcr.io/acme-evil/agent``.
    """
    if not is_literal(entry):
        return glob_match(image, entry) or glob_match(image, qualify(entry))
    for prefix in {entry, qualify(entry)} if "/" in entry else {entry}:
        if image == prefix:
            return True
        if image.startswith(prefix) and (prefix[-1] in "/:@" or image[len(prefix)] in "/:@"):
            return True
    return False
