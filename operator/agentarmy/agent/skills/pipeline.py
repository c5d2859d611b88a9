"""A split / map / reduce pipeline without a model: deterministic skills for the example
in ``manifests/examples/pipeline.yaml`` and the demo.

- ``split`` (the lead): splits ``text`` into ``parts`` pieces, starts one ``worker`` child
  per piece and waits; then starts one ``reducer`` child with the workers' results and
  waits; then returns the reducer's result. Each wait parks the task in the router (no
  agent slot is held), and the stage reached is stored as the task's checkpoint.
- ``wordcount`` (a worker): the words of ``text`` and how often each occurs, after
  ``workSeconds`` of pretended work (default 0), so parts visibly run in parallel.
- ``reduce`` (the reducer): adds up the workers' counts (``parts``).

Input of ``split``: ``text``; ``parts`` (default 3); ``workSeconds`` (passed to each
worker, default 0); ``worker`` and ``reducer``, each ``{fleet, capability}`` (default
fleets ``workers`` / ``reducer`` with capabilities ``wordcount`` / ``reduce``).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import SkillFailed, SkillResult, TaskContext
from agentarmy.api import wire

WORD = re.compile(r"[\w']+")
TOP_WORDS = 5
MAX_WORK_SECONDS = 60.0


def work_seconds(task_input: dict[str, Any]) -> float:
    seconds = task_input.get("workSeconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise SkillFailed("input.workSeconds must be a number", retryable=False)
    if not 0 <= seconds <= MAX_WORK_SECONDS:
        raise SkillFailed(
            f"input.workSeconds must be from 0 to {MAX_WORK_SECONDS:g}", retryable=False
        )
    return float(seconds)


def split_words(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` pieces of (nearly) equal word counts, in order."""
    words = text.split()
    size, extra = divmod(len(words), parts)
    pieces, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(" ".join(words[start:end]))
        start = end
    return pieces


def _target(spec: Any, fleet: str, capability: str, what: str) -> tuple[str, str]:
    if spec is None:
        return fleet, capability
    if not isinstance(spec, dict) or not spec.get("fleet") or not spec.get("capability"):
        raise SkillFailed(f"input.{what} must be {{fleet, capability}}", retryable=False)
    return str(spec["fleet"]), str(spec["capability"])


class SplitSkill:
    name = "split"
    description = "Split a text into parts, count words in parallel workers, reduce the counts."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "parts": {"type": "integer", "minimum": 1, "maximum": 100},
            "workSeconds": {"type": "number", "minimum": 0, "maximum": MAX_WORK_SECONDS},
            "worker": {"type": "object"},
            "reducer": {"type": "object"},
        },
        "required": ["text"],
    }

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, ctx: TaskContext) -> SkillResult:
        stage = (ctx.checkpoint or {}).get("stage")
        if stage is None:
            return await self._map(ctx)
        failed = [c for c in ctx.children or [] if c.phase != "Succeeded"]
        if failed:
            raise SkillFailed(
                f"{len(failed)} {stage} task(s) did not succeed: {failed[0].error}",
                retryable=False,
            )
        if stage == "map":
            return await self._reduce(ctx)
        (reduced,) = ctx.children or []
        parts = (ctx.checkpoint or {}).get("parts", 0)
        return SkillResult(output={**(reduced.result or {}), "parts": parts})

    async def _map(self, ctx: TaskContext) -> SkillResult:
        text, parts = ctx.input.get("text"), ctx.input.get("parts", 3)
        if not isinstance(text, str) or not text.strip():
            raise SkillFailed("input.text must be a non-empty string", retryable=False)
        if not isinstance(parts, int) or not 1 <= parts <= 100:
            raise SkillFailed("input.parts must be an integer from 1 to 100", retryable=False)
        fleet, capability = _target(ctx.input.get("worker"), "workers", "wordcount", "worker")
        seconds = work_seconds(ctx.input)
        children = [
            wire.SubmitTask(
                namespace=self.settings.namespace,
                fleet=fleet,
                capability=capability,
                input={"text": piece, "part": index, "workSeconds": seconds},
            )
            for index, piece in enumerate(split_words(text, parts))
        ]
        await ctx.spawn(children, "failFast", {"stage": "map"})

    async def _reduce(self, ctx: TaskContext) -> SkillResult:
        fleet, capability = _target(ctx.input.get("reducer"), "reducer", "reduce", "reducer")
        counted = [c.result or {} for c in ctx.children or []]
        reducer = wire.SubmitTask(
            namespace=self.settings.namespace,
            fleet=fleet,
            capability=capability,
            input={"parts": counted},
        )
        await ctx.spawn([reducer], "all", {"stage": "reduce", "parts": len(counted)})


class WordCountSkill:
    name = "wordcount"
    description = "Count the words of a text."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "workSeconds": {"type": "number", "minimum": 0, "maximum": MAX_WORK_SECONDS},
        },
        "required": ["text"],
    }

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, ctx: TaskContext) -> SkillResult:
        text = ctx.input.get("text")
        if not isinstance(text, str):
            raise SkillFailed("input.text must be a string", retryable=False)
        await asyncio.sleep(work_seconds(ctx.input))
        counts = Counter(word.lower() for word in WORD.findall(text))
        return SkillResult(
            output={
                "part": ctx.input.get("part"),
                "words": sum(counts.values()),
                "counts": dict(counts),
                "agent": self.settings.name,
            }
        )


class ReduceSkill:
    name = "reduce"
    description = "Add up word counts from several parts."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"parts": {"type": "array", "items": {"type": "object"}}},
        "required": ["parts"],
    }

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, ctx: TaskContext) -> SkillResult:
        parts = ctx.input.get("parts")
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise SkillFailed("input.parts must be a list of objects", retryable=False)
        total: Counter[str] = Counter()
        for part in parts:
            total.update({str(k): int(v) for k, v in (part.get("counts") or {}).items()})
        top = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:TOP_WORDS]
        return SkillResult(
            output={
                "words": sum(total.values()),
                "distinct": len(total),
                "top": [{"word": w, "count": n} for w, n in top],
                "workers": sorted({str(p.get("agent", "")) for p in parts}),
            }
        )
