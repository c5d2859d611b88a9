"""Image references as a registry sees them, and the allow-list test on them.

``python:3.11`` and ``docker.io/library/python:3.11`` are the same image, so
references are normalised the way the container runtime does before a prefix
is compared: a policy that allows ``ghcr.io/acme/`` cannot be passed with a
short name that resolves elsewhere.
"""

from __future__ import annotations

from agentarmy.policy.globs import glob_match, is_literal

DEFAULT_REGISTRY = "docker.io"


def normalize_image(reference: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox``; fully qualified names unchanged."""
    first, sep, _ = reference.partition("/")
    if not sep:
        return f"{DEFAULT_REGISTRY}/library/{reference}"
    if "." in first or ":" in first or first == "localhost":
        return reference
    return f"{DEFAULT_REGISTRY}/{reference}"


def under(image: str, entry: str) -> bool:
    """Whether normalised ``image`` is allowed by one allow-list entry.

    An entry with wildcards is a glob over the whole reference. A literal entry
    is a prefix that ends on a boundary: ``ghcr.io/acme/`` and ``ghcr.io/acme``
    both allow ``ghcr.io/acme/agent:1`` but never ``ghcr.io/acme-evil/agent``.
    """
    if not is_literal(entry):
        return glob_match(image, entry) or glob_match(image, normalize_image(entry))
    for prefix in {entry, normalize_image(entry)} if "/" in entry else {entry}:
        if image == prefix:
            return True
        if image.startswith(prefix) and (prefix[-1] in "/:@" or image[len(prefix)] in "/:@"):
            return True
    return False
