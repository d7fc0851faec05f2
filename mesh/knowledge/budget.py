"""ContextBudgeter: the records relevant to a task, projected and rendered, within a token budget.

Every LM prompt the mesh builds from its records goes through ``build``: retrieve the ``k`` records
closest to the task (Faiss over their embeddings), project each onto the fields the task needs, render
them compactly, and add them best first while they fit. What did not make it is reported, record by
record and field by field, so a caller (and a person reading a trace) knows what the model did not see:

- ``"budget"``: the record was relevant but its rendering did not fit in what was left;
- ``"min_score"``: retrieved, but less similar to the task than ``min_score``;
- ``"filtered"``: retrieved, but the caller's ``where`` rejected it;
- ``"fields"``: the record is in, these fields of it are not (the task did not ask for them).

Records ranked below the ``k`` nearest are not considered and not listed. The budget is checked on the
final text with the counter's exact count, so ``used_tokens <= budget_tokens`` always holds.

    budgeter = ContextBudgeter(store)
    context = budgeter.build("paginate search results", kinds=["learning_session"], budget_tokens=2000)
    prompt = f"{instructions}\\n\\n{context.text}"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mesh.knowledge.records import KINDS, Record, dump_record, record_class
from mesh.knowledge.render import project, render
from mesh.knowledge.store import Hit, RecordStore
from mesh.knowledge.tokens import TokenCounter, default_counter

SEPARATOR = "\n\n"
Reason = Literal["budget", "min_score", "filtered", "fields"]
Fields = Mapping[str, Sequence[str]] | Sequence[str] | None


@dataclass(frozen=True)
class Included:
    """A record in the context: its id, kind, similarity, the fields rendered, and the tokens it took."""

    id: int
    kind: str
    score: float
    fields: list[str]
    tokens: int
    record: Record
    projected: dict


@dataclass(frozen=True)
class LeftOut:
    """Something the context does not hold: a whole record (``fields`` empty) or some fields of one.

    ``tokens`` is what it would have cost: the record's rendering (for a whole record), or the extra
    tokens of rendering the record in full rather than projected (for fields).
    """

    id: int
    kind: str
    score: float
    reason: Reason
    tokens: int
    fields: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    text: str
    used_tokens: int
    budget_tokens: int
    counter: str
    included: list[Included]
    left_out: list[LeftOut]

    def left_out_records(self, reason: Reason | None = None) -> list[int]:
        """Ids of the records left out entirely (for ``reason``, or any reason)."""
        return [item.id for item in self.left_out if item.reason != "fields" and reason in (None, item.reason)]


class ContextBudgeter:
    """Builds prompt context from a ``RecordStore`` under a token budget; see the module docstring."""

    def __init__(self, store: RecordStore, *, counter: TokenCounter | None = None) -> None:
        self.store = store
        self.counter = counter or default_counter()

    def build(
        self,
        task: str,
        *,
        budget_tokens: int,
        kinds: Sequence[str] | None = None,
        fields: Fields = None,
        k: int = 50,
        min_score: float | None = None,
        where: Callable[[Record], bool] | None = None,
    ) -> Context:
        """Context for ``task``: the relevant records of ``kinds``, projected onto ``fields``, within the budget.

        ``fields`` maps a kind to field paths (a kind it does not name gets its ``DEFAULT_FIELDS``), or
        is a plain list of paths of which each kind takes those naming its fields. ``min_score`` (cosine
        similarity, -1 to 1) drops weak matches; without it the ``k`` nearest compete for the budget.
        """
        if budget_tokens < 0:
            raise ValueError("budget_tokens must not be negative")
        kinds = list(kinds or KINDS)
        paths = self._paths(kinds, fields)
        hits = self.store.search(task, k=k, kinds=kinds)
        return self.assemble(hits, paths, budget_tokens=budget_tokens, min_score=min_score, where=where)

    def assemble(
        self,
        hits: Sequence[Hit],
        paths: Mapping[str, Sequence[str]],
        *,
        budget_tokens: int,
        min_score: float | None = None,
        where: Callable[[Record], bool] | None = None,
    ) -> Context:
        """The packing step of ``build``, for hits a caller already has (best first)."""
        records = self.store.get_many([hit.id for hit in hits])
        included: list[Included] = []
        left_out: list[LeftOut] = []
        blocks: list[str] = []
        used = 0
        separator = self.counter.count(SEPARATOR)
        for hit in hits:
            record = records.get(hit.id)
            if record is None:
                continue  # deleted since the search
            title = f"[{hit.kind} #{hit.id}]"
            data = dump_record(record)
            projected, dropped = project(data, paths[hit.kind])
            block = render(title, projected)
            tokens = self.counter.count(block)
            if min_score is not None and hit.score < min_score:
                left_out.append(LeftOut(hit.id, hit.kind, hit.score, "min_score", tokens))
                continue
            if where is not None and not where(record):
                left_out.append(LeftOut(hit.id, hit.kind, hit.score, "filtered", tokens))
                continue
            cost = tokens + (separator if blocks else 0)
            if used + cost > budget_tokens:
                left_out.append(LeftOut(hit.id, hit.kind, hit.score, "budget", tokens))
                continue
            used += cost
            blocks.append(block)
            included.append(Included(hit.id, hit.kind, hit.score, list(paths[hit.kind]), tokens, record, projected))
            if dropped:
                extra = max(0, self.counter.count(render(title, data)) - tokens)
                left_out.append(LeftOut(hit.id, hit.kind, hit.score, "fields", extra, dropped))
        text = SEPARATOR.join(blocks)
        used = self.counter.count(text)
        while used > budget_tokens:  # token counts need not add up across a join; never trust the sum
            last = included.pop()
            blocks.pop()
            left_out = [item for item in left_out if not (item.id == last.id and item.reason == "fields")]
            left_out.append(LeftOut(last.id, last.kind, last.score, "budget", last.tokens))
            text = SEPARATOR.join(blocks)
            used = self.counter.count(text)
        return Context(text, used, budget_tokens, self.counter.name, included, left_out)

    @staticmethod
    def _paths(kinds: Sequence[str], fields: Fields) -> dict[str, list[str]]:
        """Field paths per kind. A plain list applies to each kind the paths that name its fields; a path
        naming no kind's field, or a kind left with no path, is an error (a typo would otherwise pass)."""
        if isinstance(fields, str):
            raise TypeError("fields is a list of field paths, not one string")
        classes = {kind: record_class(kind) for kind in kinds}
        if fields is None or isinstance(fields, Mapping):
            fields = fields or {}
            strange = set(fields) - set(KINDS)
            if strange:
                raise LookupError(f"unknown record kind {', '.join(sorted(strange))}")
            paths = {kind: list(fields.get(kind, cls.DEFAULT_FIELDS)) for kind, cls in classes.items()}
            for kind, chosen in paths.items():
                unknown = [path for path in chosen if path.split(".")[0] not in classes[kind].model_fields]
                if unknown:
                    raise ValueError(f"{kind} records have no field {', '.join(unknown)}")
            return paths
        fields = list(fields)
        paths = {kind: [p for p in fields if p.split(".")[0] in cls.model_fields] for kind, cls in classes.items()}
        unknown = [path for path in fields if not any(path in chosen for chosen in paths.values())]
        if unknown:
            raise ValueError(f"no {' or '.join(kinds)} record has a field {', '.join(unknown)}")
        empty = [kind for kind, chosen in paths.items() if not chosen]
        if empty:
            raise ValueError(f"none of {fields} is a field of {', '.join(empty)} records: pass kinds= or a mapping")
        return paths
