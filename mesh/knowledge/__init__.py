"""What the mesh knows: compressed records of its LM work, and prompt context built from them under a budget.

The library, chunks, vectors and embedding modules join this package later (DESIGN.md); for now they
stay at ``mesh.library``, ``mesh.chunks``, ``mesh.vectors`` and ``mesh.embedding``.
"""

from mesh.knowledge.budget import Context, ContextBudgeter, Included, LeftOut
from mesh.knowledge.codec import Dictionary, RecordCodec
from mesh.knowledge.records import (
    KINDS,
    AgentDefinition,
    Attempt,
    Blueprint,
    CapabilityNeed,
    LearningSession,
    OptimizationExample,
    Record,
    TraceStep,
    load_record,
    upgrade,
)
from mesh.knowledge.store import Hit, RecordStore
from mesh.knowledge.tokens import TokenCounter, count_tokens, default_counter

__all__ = [
    "KINDS",
    "AgentDefinition",
    "Attempt",
    "Blueprint",
    "CapabilityNeed",
    "Context",
    "ContextBudgeter",
    "Dictionary",
    "Hit",
    "Included",
    "LearningSession",
    "LeftOut",
    "OptimizationExample",
    "Record",
    "RecordCodec",
    "RecordStore",
    "TokenCounter",
    "TraceStep",
    "count_tokens",
    "default_counter",
    "load_record",
    "upgrade",
]
