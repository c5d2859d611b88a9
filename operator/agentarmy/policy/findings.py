"""What an evaluation returns: one finding per broken rule, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["enforce", "audit"]
Outcome = Literal["allow", "deny", "warn"]


@dataclass(frozen=True, order=True)
class Finding:
    """One rule of one Policy that a subject breaks."""

    policy: str
    """``namespace/name`` of the Policy."""
    rule: str
    """The rule's name as in ``spec.rules``, e.g. ``allowedImageRegistries``."""
    field: str
    """Path of the offending field in the subject, e.g. ``spec.template.spec.image``."""
    mode: Mode
    message: str
    """What is wrong, starting with the field: ``spec.image "x" is not under ghcr.io/acme/``."""

    def text(self) -> str:
        return f"policy {self.policy}, rule {self.rule}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {
            "policy": self.policy,
            "rule": self.rule,
            "field": self.field,
            "mode": self.mode,
            "message": self.message,
        }


@dataclass(frozen=True)
class Verdict:
    """Every finding of every Policy that selects the subject."""

    findings: tuple[Finding, ...] = ()
    policies: tuple[str, ...] = ()
    """The Policies that selected the subject (``namespace/name``), sorted."""
    decided_by: dict[str, str] = field(default_factory=dict, compare=False)
    """For limits several Policies set: rule -> the Policy whose limit is the strictest."""

    @property
    def denials(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.mode == "enforce")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.mode == "audit")

    @property
    def allowed(self) -> bool:
        return not self.denials

    @property
    def outcome(self) -> Outcome:
        if self.denials:
            return "deny"
        return "warn" if self.findings else "allow"

    def message(self) -> str:
        """The denial as one text a person reads in ``kubectl``'s error."""
        return "; ".join(f.text() for f in self.denials)


ALLOW = Verdict()
