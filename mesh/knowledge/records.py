"""The records the mesh keeps for its LM features, one pydantic schema per kind, each schema versioned.

Three kinds: a learning session (what was tried, what failed, what was learned), an agent definition
(brief and blueprint), an optimization example (a DSPy demo: inputs, outputs, trace). Every record
class names its ``KIND`` and ``SCHEMA_VERSION``; a stored record carries both, so a record written
under an older schema is upgraded on read by the functions registered with ``upgrade`` rather than
failing validation. Values are JSON values only (finite floats, string keys): what msgpack and a
prompt can both carry without loss.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


def _now() -> datetime:
    return datetime.now(UTC)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Record(_Part):
    """A stored record. Subclasses set ``KIND``, ``SCHEMA_VERSION`` and ``DEFAULT_FIELDS``."""

    KIND: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]
    DEFAULT_FIELDS: ClassVar[tuple[str, ...]]
    """The fields a prompt usually needs; the budgeter projects onto these unless told otherwise."""

    def search_text(self) -> str:
        """The text embedded for retrieval: what a task description would be compared with."""
        raise NotImplementedError


# -- learning sessions ------------------------------------------------------------------------------


class Attempt(_Part):
    """One thing tried in a learning session, and how it went."""

    action: str = Field(description="What was tried, in a sentence.")
    tool: str | None = Field(default=None, description="The tool called, if any (`agent__tool`).")
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    outcome: Literal["succeeded", "failed", "partial"]
    error: str | None = Field(default=None, description="What went wrong, when it did.")
    score: float | None = None


class LearningSession(Record):
    """What an agent tried while learning a skill, what failed, and what it learned."""

    KIND: ClassVar[str] = "learning_session"
    SCHEMA_VERSION: ClassVar[int] = 1
    DEFAULT_FIELDS: ClassVar[tuple[str, ...]] = ("skill", "failures", "lessons")

    agent: str
    skill: str = Field(description="The skill or task family being learned.")
    goal: str = ""
    attempts: list[Attempt] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list, description="What failed, summarised.")
    lessons: list[str] = Field(default_factory=list, description="What was learned.")
    score_before: float | None = None
    score_after: float | None = None
    started_at: datetime = Field(default_factory=_now)
    tags: list[str] = Field(default_factory=list)

    def search_text(self) -> str:
        return " ".join([self.skill, self.goal, *self.failures, *self.lessons, *self.tags])


# -- agent definitions ------------------------------------------------------------------------------


class CapabilityNeed(_Part):
    """A capability a role needs, and why."""

    name: str
    why: str = ""


class Blueprint(_Part):
    """The typed reading of a brief: who the agent is and what it needs."""

    role: str
    domain: str = ""
    objectives: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    audience: str = ""
    capabilities: list[CapabilityNeed] = Field(default_factory=list)


class AgentDefinition(Record):
    """An agent as the builder defined it: the brief it came from and the blueprint read from it."""

    KIND: ClassVar[str] = "agent_definition"
    SCHEMA_VERSION: ClassVar[int] = 1
    DEFAULT_FIELDS: ClassVar[tuple[str, ...]] = (
        "name",
        "blueprint.role",
        "blueprint.objectives",
        "blueprint.constraints",
        "blueprint.capabilities.name",
    )

    name: str
    brief: str
    blueprint: Blueprint
    instructions: str = ""
    created_at: datetime = Field(default_factory=_now)

    def search_text(self) -> str:
        b = self.blueprint
        return " ".join([self.brief, b.role, b.domain, *b.objectives, *(c.name for c in b.capabilities)])


# -- optimization examples --------------------------------------------------------------------------


class TraceStep(_Part):
    """One predictor call inside a DSPy program run."""

    module: str
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    outputs: dict[str, JsonValue] = Field(default_factory=dict)


class OptimizationExample(Record):
    """A DSPy demo: a program's inputs and outputs, with the trace that produced them."""

    KIND: ClassVar[str] = "optimization_example"
    SCHEMA_VERSION: ClassVar[int] = 1
    DEFAULT_FIELDS: ClassVar[tuple[str, ...]] = ("inputs", "outputs")

    program: str = Field(description="The program or signature the example trains, e.g. `builder.parse_brief`.")
    inputs: dict[str, JsonValue]
    outputs: dict[str, JsonValue]
    trace: list[TraceStep] = Field(default_factory=list)
    score: float | None = None
    source: str = Field(default="", description="Where it came from: labeled, bootstrapped, human...")
    created_at: datetime = Field(default_factory=_now)

    def search_text(self) -> str:
        return " ".join([self.program, *(_flat(v) for v in self.inputs.values())])


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(_flat(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_flat(v) for v in value)
    return "" if value is None else str(value)


# -- kinds, versions, upgrades ----------------------------------------------------------------------

KINDS: dict[str, type[Record]] = {cls.KIND: cls for cls in (LearningSession, AgentDefinition, OptimizationExample)}
"""Every record kind, by name, at its current schema version."""

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
_UPGRADES: dict[tuple[str, int], Upgrade] = {}


def upgrade(kind: str, from_version: int) -> Callable[[Upgrade], Upgrade]:
    """Register the function that turns a ``kind`` record's data at ``from_version`` into the next version's."""

    def register(function: Upgrade) -> Upgrade:
        _UPGRADES[(kind, from_version)] = function
        return function

    return register


def record_class(kind: str) -> type[Record]:
    try:
        return KINDS[kind]
    except KeyError:
        raise LookupError(f"unknown record kind {kind!r} (known: {', '.join(sorted(KINDS))})") from None


def load_record(kind: str, schema_version: int, data: dict[str, Any]) -> Record:
    """Validate stored data as a record, upgrading it first when it was written under an older schema."""
    cls = record_class(kind)
    if schema_version > cls.SCHEMA_VERSION:
        raise ValueError(f"{kind} record has schema version {schema_version}; this code knows {cls.SCHEMA_VERSION}")
    while schema_version < cls.SCHEMA_VERSION:
        step = _UPGRADES.get((kind, schema_version))
        if step is None:
            raise LookupError(f"no upgrade registered for {kind} records from schema version {schema_version}")
        data, schema_version = step(data), schema_version + 1
    return cls.model_validate(data)


def dump_record(record: Record) -> dict[str, Any]:
    """The record as JSON-compatible data (datetimes as ISO strings): what msgpack stores."""
    return record.model_dump(mode="json")
