"""Compressed records and the context budgeter, measured: bytes, speed, tokens, retrieval, demos per budget.

Run: ``python bench/bench_compression.py [sizes...]`` (retrieval sizes, default 10000 100000). Prints
figures only; nothing here is asserted.

The records are generated, but their free text is real: sentences taken from the descriptions and
docstrings of the packages installed beside mesh (tens of thousands of distinct sentences of English
technical prose), so byte ratios reflect real language rather than templates repeating themselves.
Names, tools, error messages and numbers come from small vocabularies, as they do in a real mesh (a
handful of agents and tools, recurring errors).

1. Bytes and speed per kind: plain JSON, JSON+zstd, msgpack, msgpack+zstd, each record its own frame;
   with a dictionary trained on 1,000 records and measured on 1,000 others (held out).
2. Tokens (o200k_base) of what a prompt would carry: JSON, the compact rendering of the whole record,
   the rendering projected onto the kind's default fields, and — for contrast — the compressed frame
   as base64, the only way bytes could enter a prompt.
3. (within 2) Learning sessions of about 500 tokens, projected; briefs against their blueprint's role.
4. One task's whole context, the 20 nearest records: as JSON, and as the budgeter renders them.
5. How many optimization examples fit in 20,000 tokens, as JSON and through the budgeter.
6. Retrieval at 10k and 100k records: ``RecordStore.search`` (embed the task, Faiss, merge kinds) and
   ``ContextBudgeter.build`` (that, plus decoding, projecting, rendering and counting k=50 records).
"""

from __future__ import annotations

import base64
import json
import random
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

from mesh import embedding
from mesh.knowledge import (
    KINDS,
    AgentDefinition,
    Attempt,
    Blueprint,
    CapabilityNeed,
    ContextBudgeter,
    LearningSession,
    OptimizationExample,
    Record,
    RecordStore,
    TraceStep,
    default_counter,
)
from mesh.knowledge import codec as record_codec
from mesh.knowledge.records import dump_record
from mesh.knowledge.render import project, render

TRAIN = 1000
HELD_OUT = 1000
QUERIES = 300
BUDGET = 20_000

AGENTS = ["librarian", "ux_designer", "billing_clerk", "support_triage", "code_reviewer", "data_analyst", "scheduler"]
TOOLS = [
    "librarian__search",
    "librarian__read",
    "orders__get_order",
    "orders__refund",
    "crm__lookup_customer",
    "github__list_issues",
    "github__create_comment",
    "figma__export_frame",
    "calendar__find_slot",
    "sql__run_query",
    "web__fetch",
]
SKILLS = [
    "refund lookup",
    "paginated search",
    "summarising long threads",
    "triaging bug reports",
    "designing onboarding screens",
    "reconciling invoices",
    "scheduling across time zones",
    "reviewing pull requests for security issues",
    "writing SQL for monthly reports",
    "answering questions from the handbook",
]
ERRORS = [
    "HTTP 404: order {n} not found",
    "timeout after {n} s",
    "schema validation failed: '{field}' is a required property",
    "policy denied: scope {field}:write missing",
    "rate limited (429), retry after {n} s",
    "tool returned an empty result for query '{word}'",
    "answer contradicted the source passage on '{word}'",
    "JSON decode error at line {n} column 1",
]
FIELDS = ["order_id", "customer", "since", "limit", "cursor", "frame", "repo", "query", "timezone"]
PROGRAMS = ["builder.parse_brief", "librarian.answer", "learning.assess", "discovery.rerank"]
ROLES = [
    "UX designer specialising in mobile apps",
    "billing support agent for a SaaS product",
    "security-minded code reviewer",
    "data analyst for monthly sales reports",
    "technical writer for API documentation",
    "triage agent for customer support tickets",
]


def corpus_sentences() -> list[str]:
    """Sentences of English technical prose: installed packages' descriptions and docstrings."""
    site = Path(sysconfig.get_paths()["purelib"])
    texts = [path.read_text(errors="replace") for path in sorted(site.glob("*.dist-info/METADATA"))]
    docstring = re.compile(r'"""(.*?)"""', re.S)
    texts += [d for path in sorted(site.glob("*/**/*.py")) for d in docstring.findall(path.read_text(errors="replace"))]
    keep = set()
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
            words = sentence.split()
            if 6 <= len(words) <= 40 and sentence[0].isupper() and not re.search(r"http|[{}<>|`\\=_]|::", sentence):
                keep.add(sentence.strip())
    return sorted(keep)


class Generator:
    """Realistic records: small vocabularies for names, real prose for text."""

    def __init__(self, sentences: list[str], seed: int = 7) -> None:
        self.sentences = sentences
        self.rng = random.Random(seed)

    def text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(self.sentences) for _ in range(self.rng.randint(low, high)))

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(self.rng.choice(self.sentences).split()) for _ in range(n)).strip(".,;:")

    def error(self) -> str:
        return self.rng.choice(ERRORS).format(
            n=self.rng.randint(1, 99999), field=self.rng.choice(FIELDS), word=self.words(2)
        )

    def arguments(self) -> dict:
        return {
            name: self.rng.choice([self.rng.randint(1, 10**6), self.words(2), self.rng.random() < 0.5])
            for name in self.rng.sample(FIELDS, self.rng.randint(1, 3))
        }

    def learning_session(self) -> LearningSession:
        attempts = []
        for _ in range(self.rng.randint(2, 5)):
            failed = self.rng.random() < 0.45
            attempts.append(
                Attempt(
                    action=self.text(1, 1),
                    tool=self.rng.choice(TOOLS),
                    arguments=self.arguments(),
                    outcome="failed" if failed else self.rng.choice(["succeeded", "partial"]),
                    error=self.error() if failed else None,
                    score=round(self.rng.random(), 2),
                )
            )
        before = round(self.rng.random() * 0.6, 2)
        return LearningSession(
            agent=self.rng.choice(AGENTS),
            skill=self.rng.choice(SKILLS),
            goal=self.text(1, 2),
            attempts=attempts,
            failures=[f"{a.tool}: {a.error}" for a in attempts if a.error],
            lessons=[self.text(1, 1) for _ in range(self.rng.randint(1, 3))],
            score_before=before,
            score_after=round(min(1.0, before + self.rng.random() * 0.4), 2),
            tags=self.rng.sample(["sandbox", "emulated", "regression", "docs", "api", "ui", "billing"], 2),
        )

    def agent_definition(self) -> AgentDefinition:
        role = self.rng.choice(ROLES)
        return AgentDefinition(
            name=f"{self.rng.choice(AGENTS)}_{self.rng.randint(1, 999)}",
            brief=f"Become a {role}. {self.text(1, 3)}",
            blueprint=Blueprint(
                role=role,
                domain=self.words(2),
                objectives=[self.text(1, 1) for _ in range(self.rng.randint(2, 4))],
                constraints=[self.text(1, 1) for _ in range(self.rng.randint(1, 3))],
                audience=self.words(3),
                capabilities=[
                    CapabilityNeed(name=tool, why=self.text(1, 1))
                    for tool in self.rng.sample(TOOLS, self.rng.randint(2, 4))
                ],
            ),
            instructions=self.text(3, 8),
        )

    def optimization_example(self) -> OptimizationExample:
        question = self.text(1, 1)
        passages = [self.text(2, 4) for _ in range(self.rng.randint(1, 3))]
        answer = self.text(1, 2)
        reasoning = self.text(1, 3)
        return OptimizationExample(
            program=self.rng.choice(PROGRAMS),
            inputs={"question": question, "passages": passages},
            outputs={"answer": answer},
            trace=[
                TraceStep(
                    module="generate_answer",
                    inputs={"question": question, "passages": passages},
                    outputs={"reasoning": reasoning, "answer": answer},
                )
            ],
            score=round(self.rng.random(), 2),
            source=self.rng.choice(["labeled", "bootstrapped"]),
        )

    def record(self, kind: str) -> Record:
        return getattr(self, kind)()

    def mixed(self, n: int) -> list[Record]:
        kinds = ["learning_session"] * 6 + ["optimization_example"] * 3 + ["agent_definition"]
        return [self.record(self.rng.choice(kinds)) for _ in range(n)]


def compact_json(record: Record) -> bytes:
    return json.dumps(dump_record(record), separators=(",", ":"), ensure_ascii=False).encode()


def timed(function, items) -> tuple[list, float]:
    started = time.perf_counter()
    out = [function(item) for item in items]
    return out, time.perf_counter() - started


def bench_bytes(generator: Generator) -> None:
    print("1. Bytes and speed (each record its own zstd frame, level 3; ratios are JSON bytes / stored bytes)")
    for kind in ("learning_session", "agent_definition", "optimization_example"):
        records = [generator.record(kind) for _ in range(TRAIN + HELD_OUT)]
        train, test = records[:TRAIN], records[TRAIN:]
        json_bytes = [compact_json(r) for r in test]
        packed = [record_codec.pack(r) for r in test]
        total_json = sum(map(len, json_bytes))

        def ratio(frames: list[bytes], total: int = total_json) -> str:
            return f"{total / sum(map(len, frames)):4.2f}x"

        plain = zstandard.ZstdCompressor(level=3)
        json_dict = zstandard.train_dictionary(record_codec.DEFAULT_DICT_SIZE, [compact_json(r) for r in train])
        json_with_dict = zstandard.ZstdCompressor(level=3, dict_data=json_dict)
        dictionary = record_codec.train(kind, 1, [record_codec.pack(r) for r in train])
        codec = record_codec.RecordCodec([dictionary])
        codec19 = record_codec.RecordCodec([dictionary], level=19)
        no_dict = record_codec.RecordCodec()

        frames_plain_json = [plain.compress(b) for b in json_bytes]
        frames_json_dict = [json_with_dict.compress(b) for b in json_bytes]
        frames_plain = [no_dict.compress(kind, p)[1] for p in packed]
        frames, compress_s = timed(lambda p, c=codec, k=kind: c.compress(k, p)[1], packed)
        frames19 = [codec19.compress(kind, p)[1] for p in packed]
        _, decompress_s = timed(codec.decompress, frames)
        _, encode_s = timed(codec.encode, test)
        decoded, decode_s = timed(codec.decode, frames)
        assert decoded == test
        raw_mb = sum(map(len, packed)) / 1e6
        mean_json = total_json / len(test)
        print(f"  {kind}: {len(test):,} held-out records, mean {mean_json:,.0f} B as JSON")
        print(
            f"    JSON 1.00x  JSON+zstd {ratio(frames_plain_json)}  msgpack {ratio(packed)}"
            f"  msgpack+zstd {ratio(frames_plain)}"
        )
        print(
            f"    with a {len(dictionary.data) // 1024} KB dictionary trained on {TRAIN:,} others:"
            f"  msgpack+zstd {ratio(frames)} (level 19: {ratio(frames19)})  JSON+zstd {ratio(frames_json_dict)}"
        )
        amortised = total_json / (sum(map(len, frames)) + len(dictionary.data))
        print(f"    counting the dictionary once against these {len(test):,} records: {amortised:4.2f}x")
        print(
            f"    zstd with dictionary: compress {raw_mb / compress_s:,.0f} MB/s,"
            f" decompress {raw_mb / decompress_s:,.0f} MB/s; whole record (pydantic+msgpack+zstd):"
            f" encode {len(test) / encode_s:,.0f}/s,"
            f" decode+validate {len(test) / decode_s:,.0f}/s"
        )


def bench_tokens(generator: Generator) -> None:
    counter = default_counter()
    print(f"2. Tokens per record ({counter.name}), mean over 500 records of each kind")
    for kind in ("learning_session", "agent_definition", "optimization_example"):
        records = [generator.record(kind) for _ in range(500)]
        codec = record_codec.RecordCodec([record_codec.train(kind, 1, [record_codec.pack(r) for r in records])])
        rows = {"JSON, indented": [], "JSON, compact": [], "rendered, all fields": [], "rendered, projected": []}
        rows["zstd frame as base64"] = []
        for record in records:
            data = dump_record(record)
            fields = type(record).DEFAULT_FIELDS
            rows["JSON, indented"].append(counter.count(json.dumps(data, indent=2, ensure_ascii=False)))
            rows["JSON, compact"].append(counter.count(compact_json(record).decode()))
            rows["rendered, all fields"].append(counter.count(render(f"[{kind} #1]", data)))
            rows["rendered, projected"].append(counter.count(render(f"[{kind} #1]", project(data, fields)[0])))
            rows["zstd frame as base64"].append(counter.count(base64.b64encode(codec.encode(record)[1]).decode()))
        indented, compact = statistics.mean(rows["JSON, indented"]), statistics.mean(rows["JSON, compact"])
        print(f"  {kind} (projected onto {', '.join(type(records[0]).DEFAULT_FIELDS)})")
        for label, counts in rows.items():
            mean = statistics.mean(counts)
            print(
                f"    {label:<22} {mean:5.0f} tokens  indented JSON / this {indented / mean:4.2f}x"
                f"  compact JSON / this {compact / mean:4.2f}x"
            )
    sessions = [generator.learning_session() for _ in range(2000)]
    near_500 = [s for s in sessions if 450 <= counter.count(json.dumps(dump_record(s), indent=2)) <= 550]
    lessons = [
        counter.count(render("[learning_session #1]", project(dump_record(s), ["lessons"])[0])) for s in near_500
    ]
    projected = [
        counter.count(render("[learning_session #1]", project(dump_record(s), LearningSession.DEFAULT_FIELDS)[0]))
        for s in near_500
    ]
    print(
        f"  {len(near_500)} learning sessions of 450-550 tokens as JSON: projected onto skill+failures+lessons"
        f" {statistics.mean(projected):.0f} tokens (under 100: {sum(t < 100 for t in projected)}),"
        f" onto lessons alone {statistics.mean(lessons):.0f} (under 100: {sum(t < 100 for t in lessons)})"
    )
    briefs = [generator.agent_definition() for _ in range(500)]
    brief_tokens = [counter.count(d.brief) for d in briefs]
    role_tokens = [projected_tokens(counter, d, ["blueprint.role"]) for d in briefs]
    default_tokens = [projected_tokens(counter, d, AgentDefinition.DEFAULT_FIELDS) for d in briefs]
    print(
        f"  agent briefs: {statistics.mean(brief_tokens):.0f} tokens as written; the blueprint's role alone"
        f" {statistics.mean(role_tokens):.0f} tokens; the default projection"
        f" {statistics.mean(default_tokens):.0f}"
    )


def projected_tokens(counter, record: Record, fields) -> int:
    """Tokens of a record rendered onto ``fields``, without a title line."""
    return counter.count(render("", project(dump_record(record), fields)[0]).strip())


def percentiles(samples: list[float]) -> str:
    p50, p99 = np.percentile(np.array(samples) * 1000, [50, 99])
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"


def bench_retrieval(generator: Generator, sizes: list[int]) -> None:
    print(f"6. Retrieval ({QUERIES} single queries, mixed kinds, wordllama 256-d + Faiss; HNSW above 20k a kind)")
    embedding.embed(["warm up"])
    counter = default_counter()
    for n in sizes:
        records = generator.mixed(n)
        with tempfile.TemporaryDirectory() as folder:
            store = RecordStore.open(folder)
            started = time.perf_counter()
            for start in range(0, n, 5000):
                store.put_many(records[start : start + 5000])
            put_s = time.perf_counter() - started
            size = (Path(folder) / "records.sqlite3").stat().st_size
            rng = random.Random(n)
            picks = [rng.randrange(n) for _ in range(QUERIES)]
            tasks = []
            for i in picks:  # a task phrased from one stored record: its skill and first lesson, a brief, a question
                r = records[i]
                if isinstance(r, LearningSession):
                    tasks.append(f"{r.skill}: {(r.lessons or r.failures)[0]}")
                elif isinstance(r, AgentDefinition):
                    tasks.append(r.brief)
                else:
                    tasks.append(str(r.inputs["question"]))
            search_s, first, found = [], 0, 0
            for task in tasks:
                started = time.perf_counter()
                hits = store.search(task, k=10)
                search_s.append(time.perf_counter() - started)
                # a sentence recurs in several generated records: any record holding the task's text is a match
                holds = [task.split(": ", 1)[-1] in records[hit.id - 1].search_text() for hit in hits]
                first += bool(holds) and holds[0]
                found += any(holds)
            budgeter = ContextBudgeter(store, counter=counter)
            build_s = []
            for task in tasks[:100]:
                started = time.perf_counter()
                budgeter.build(task, budget_tokens=2000, k=50)
                build_s.append(time.perf_counter() - started)
            store.close()
        print(
            f"  {n:>7,} records: put {n / put_s:,.0f}/s (embedding included), file {size / n:,.0f} B a record"
            f" (vector 1,024 B of it)"
        )
        print(
            f"    search k=10          {percentiles(search_s)}  a record holding the task's text"
            f" ranked first {first / QUERIES:.2f}, in the top 10 {found / QUERIES:.2f}"
        )
        print(f"    build 2,000 tokens   {percentiles(build_s)}  (k=50: decode, project, render, count)")


def bench_context(generator: Generator) -> None:
    """A whole prompt context: the 20 records nearest a task, as JSON and as the budgeter renders them."""
    counter = default_counter()
    records = generator.mixed(2000)
    print(f"4. One task's context: the 20 nearest of 2,000 mixed records ({counter.name}, mean of 50 tasks)")
    with tempfile.TemporaryDirectory() as folder:
        store = RecordStore.open(folder)
        store.put_many(records)
        budgeter = ContextBudgeter(store, counter=counter)
        rows: dict[str, list[int]] = {"indented JSON": [], "compact JSON": [], "budgeter, all fields": []}
        rows["budgeter, default fields"] = []
        everything = {kind: list(type_.model_fields) for kind, type_ in KINDS.items()}
        for record in records[:50]:
            task = record.search_text()[:200]
            hits = store.search(task, k=20)
            found = store.get_many([hit.id for hit in hits])
            rows["indented JSON"].append(
                counter.count("\n".join(json.dumps(dump_record(found[h.id]), indent=2) for h in hits))
            )
            rows["compact JSON"].append(counter.count("\n".join(compact_json(found[h.id]).decode() for h in hits)))
            full = budgeter.build(task, fields=everything, budget_tokens=10**6, k=20)
            rows["budgeter, all fields"].append(full.used_tokens)
            rows["budgeter, default fields"].append(budgeter.build(task, budget_tokens=10**6, k=20).used_tokens)
        store.close()
    before = statistics.mean(rows["indented JSON"])
    for label, counts in rows.items():
        print(f"    {label:<26} {statistics.mean(counts):6.0f} tokens  {before / statistics.mean(counts):4.2f}x fewer")


def bench_demos(generator: Generator) -> None:
    counter = default_counter()
    print(f"5. Optimization examples in {BUDGET:,} tokens ({counter.name})")
    examples = [generator.optimization_example() for _ in range(3000)]
    with tempfile.TemporaryDirectory() as folder:
        store = RecordStore.open(folder)
        store.put_many(examples)
        budgeter = ContextBudgeter(store, counter=counter)
        task = examples[0].inputs["question"]
        for label, fields in (
            ("inputs+outputs+trace", ["inputs", "outputs", "trace"]),
            ("inputs+outputs", ["inputs", "outputs"]),
            ("question+answer", ["inputs.question", "outputs.answer"]),
        ):
            context = budgeter.build(task, kinds=["optimization_example"], fields=fields, budget_tokens=BUDGET, k=3000)
            per = context.used_tokens / max(1, len(context.included))
            print(
                f"  budgeter, {label:<22} {len(context.included):5,} examples, {per:5.0f} tokens each,"
                f" {context.used_tokens:,} tokens used"
            )
        store.close()
    used = fitted = 0
    for example in examples:
        tokens = counter.count(json.dumps(dump_record(example), indent=2, ensure_ascii=False))
        if used + tokens > BUDGET:
            break
        used, fitted = used + tokens, fitted + 1
    print(f"  as indented JSON, whole records      {fitted:5,} examples")
    short = [f"question: {generator.words(8)}\nanswer: {generator.words(3)}" for _ in range(1000)]
    print(
        f"  for scale: 1,000 examples fit in {BUDGET:,} only at <= {BUDGET // 1000} tokens each; a bare"
        f" 8-word question with a 3-word answer is {statistics.mean(map(counter.count, short)):.0f}"
    )


def main(argv: list[str]) -> None:
    sizes = [int(arg) for arg in argv] or [10_000, 100_000]
    sentences = corpus_sentences()
    print(f"Corpus: {len(sentences):,} distinct sentences from installed packages' descriptions and docstrings")
    generator = Generator(sentences)
    bench_bytes(generator)
    bench_tokens(generator)
    bench_context(generator)
    bench_demos(generator)
    bench_retrieval(generator, sizes)


if __name__ == "__main__":
    main(sys.argv[1:])
