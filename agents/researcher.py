"""The researcher agent: writes a short, cited brief on a topic from the mesh's documents.

It owns no documents. Each brief asks the librarian (another agent) for passages *through the registry*,
so every brief is an authenticated, policy-checked, recorded cross-agent call.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, Field

from mesh import Agent
from mesh.client import MeshError

agent = Agent(
    "researcher",
    version="0.1.0",
    description="Writes short briefs on a topic from the mesh's documents, citing each source passage.",
)
agent.mount("textstats")


class Source(BaseModel):
    document: str
    chunk: int
    heading: str
    score: float


class Brief(BaseModel):
    topic: str
    summary: str = Field(description="The opening sentence of each source passage, best match first.")
    sources: list[Source]
    librarian_run: str = Field(description="The registry's run id of the call to the librarian.")


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["research:brief"])
async def brief(
    topic: Annotated[str, Field(min_length=2, description="What the brief is about.")],
    k: Annotated[int, Field(ge=1, le=10, description="How many source passages to use.")] = 3,
) -> Brief:
    """Write a short brief on a topic from the workspace's documents, citing each passage it used."""
    try:
        answer = await agent.mesh.invoke("librarian", "search", {"query": topic, "k": k})
    except MeshError as exc:
        raise ValueError(f"the librarian could not be asked: {exc}") from exc
    result: dict[str, Any] = answer["result"]
    if result.get("isError"):
        raise ValueError(f"the librarian failed: {result['content'][0].get('text', '')}")
    passages = result["structuredContent"]["result"]
    if not passages:
        raise ValueError(f"no document of this mesh says anything about {topic!r}")
    summary = " ".join(_first_sentence(p["text"]) for p in passages)
    sources = [Source(document=p["document"], chunk=p["chunk"], heading=p["heading"], score=p["score"])
               for p in passages]
    return Brief(topic=topic, summary=summary, sources=sources, librarian_run=answer["run_id"])


def _first_sentence(text: str) -> str:
    """The passage's first sentence, skipping markdown headings (the source already names its heading)."""
    text = re.sub(r"(^|\s)#{1,6} [^.!?]*?(?=\s[A-Z*`])", " ", text).strip()
    for end in (". ", "! ", "? "):
        if end in text:
            return text.split(end, 1)[0] + end.strip()
    return text
