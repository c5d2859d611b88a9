"""The agent runtime's settings, read from the environment contract in api/runtime_env.py."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from agentarmy.api import runtime_env as env_names
from agentarmy.api.agent import Delegate
from agentarmy.api.common import parse_duration

_DELEGATES = TypeAdapter(list[Delegate])


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class AgentSettings:
    router_url: str
    name: str
    namespace: str
    fleet: str
    capabilities: list[str]
    skills: dict[str, str] = field(default_factory=dict)
    """capability -> skill plugin; a capability without an entry uses the skill of its name."""
    concurrency: int = 1
    heartbeat_interval: float = 10.0
    role: str = "worker"
    router_ca_file: str | None = None
    token_file: Path | None = None
    template_hash: str = ""
    model_provider: str = "none"
    model_name: str = ""
    model_endpoint: str = ""
    model_api_key: str = ""
    model_temperature: float | None = None
    model_max_output_tokens: int | None = None
    model_pricing: tuple[float, float] | None = None
    """Prices per million (prompt, completion) tokens."""
    allowed_tools: list[str] = field(default_factory=list)
    delegates: list[Delegate] = field(default_factory=list)
    """Other fleets' capabilities the llm skill offers its model as tools."""
    http_allow_list: list[str] = field(default_factory=list)

    def skill_for(self, capability: str) -> str:
        return self.skills.get(capability, capability)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentSettings:
        """Settings from AGENTARMY_* variables; ValueError names the variable at fault."""

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ValueError(f"{name} is not set")
            return value

        def number(name: str, default: str, kind: type[int] | type[float]) -> int | float:
            raw = env.get(name, "").strip() or default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a {kind.__name__}") from None

        try:
            skills = json.loads(env.get(env_names.SKILLS, "") or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"{env_names.SKILLS} is not a JSON object: {error}") from None
        if not isinstance(skills, dict):
            raise ValueError(f"{env_names.SKILLS} must be a JSON object of capability -> skill")
        try:
            heartbeat = parse_duration(env.get(env_names.HEARTBEAT_INTERVAL, "") or "10s")
        except ValueError as error:
            raise ValueError(f"{env_names.HEARTBEAT_INTERVAL}: {error}") from None
        token_file = env.get(env_names.TOKEN_FILE) or (
            env_names.DEFAULT_TOKEN_PATH if Path(env_names.DEFAULT_TOKEN_PATH).exists() else ""
        )
        temperature = env.get(env_names.MODEL_TEMPERATURE, "").strip()
        max_tokens = env.get(env_names.MODEL_MAX_OUTPUT_TOKENS, "").strip()
        capabilities = _csv(required(env_names.CAPABILITIES))
        return cls(
            router_url=required(env_names.ROUTER_URL),
            name=required(env_names.AGENT_NAME),
            namespace=env.get(env_names.NAMESPACE, "") or "default",
            fleet=env.get(env_names.FLEET, "") or required(env_names.AGENT_NAME),
            capabilities=capabilities,
            skills={str(k): str(v) for k, v in skills.items()},
            concurrency=int(number(env_names.CONCURRENCY, "1", int)),
            heartbeat_interval=heartbeat,
            role=env.get(env_names.ROLE, "") or "worker",
            router_ca_file=env.get(env_names.ROUTER_CA_FILE) or None,
            token_file=Path(token_file) if token_file else None,
            template_hash=env.get(env_names.TEMPLATE_HASH, ""),
            model_provider=env.get(env_names.MODEL_PROVIDER, "") or "none",
            model_name=env.get(env_names.MODEL_NAME, ""),
            model_endpoint=env.get(env_names.MODEL_ENDPOINT, ""),
            model_api_key=env.get(env_names.MODEL_API_KEY, ""),
            model_temperature=float(number(env_names.MODEL_TEMPERATURE, "0", float))
            if temperature
            else None,
            model_max_output_tokens=int(number(env_names.MODEL_MAX_OUTPUT_TOKENS, "0", int))
            if max_tokens
            else None,
            model_pricing=_pricing(env.get(env_names.MODEL_PRICING, "")),
            allowed_tools=_csv(env.get(env_names.ALLOWED_TOOLS, "")),
            delegates=_delegates(env.get(env_names.DELEGATES, "")),
            http_allow_list=_csv(env.get(env_names.HTTP_ALLOW_LIST, "")),
        )


def _delegates(raw: str) -> list[Delegate]:
    if not raw.strip():
        return []
    try:
        return _DELEGATES.validate_json(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{env_names.DELEGATES}: {where}: {first['msg']}") from None


def _pricing(raw: str) -> tuple[float, float] | None:
    if not raw.strip():
        return None
    try:
        prompt, completion = (float(part) for part in raw.split(","))
    except ValueError:
        raise ValueError(
            f"{env_names.MODEL_PRICING}={raw!r} must be <input>,<output> prices per 1M tokens"
        ) from None
    if prompt < 0 or completion < 0:
        raise ValueError(f"{env_names.MODEL_PRICING}={raw!r}: prices cannot be negative")
    return prompt, completion
