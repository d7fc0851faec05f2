"""The librarian agent: finds and reads passages in the workspace's documents, by meaning.

At startup it indexes the workspace's ``README.md`` and ``docs/`` (markdown, text and reST), or the paths
listed in ``[agents.librarian] paths = [...]`` of ``registry/registry.toml``, relative to the workspace.
The index lives under the agent's state folder, so a restart re-reads only files that changed; while it
runs, a call re-checks the files at most every ``refresh_seconds`` (default 10). The work is done by
``mesh.library``; this module only exposes it as tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from mesh import Agent, AgentContext
from mesh.library import DEFAULT_PATHS, MAX_K, DocumentInfo, Library, Passage, Reading

agent = Agent(
    "librarian",
    version="0.1.0",
    description="Finds and reads passages in the workspace's documents.",
)


@dataclass
class _Shelf:
    """What the startup hook opened, for the tools to use."""

    library: Library | None = None
    refresh_seconds: float = 10.0


_shelf = _Shelf()


@agent.on_startup
def index_documents(ctx: AgentContext) -> None:
    """Open the library and bring it up to date before serving."""
    paths = ctx.settings.get("paths", list(DEFAULT_PATHS))
    if isinstance(paths, str) or not all(isinstance(path, str) for path in paths):
        raise ValueError("[agents.librarian] paths must be a list of paths relative to the workspace")
    library = Library.open(ctx.workspace, ctx.state_dir, paths)
    library.refresh()
    if _shelf.library is not None:
        _shelf.library.close()
    _shelf.library = library
    _shelf.refresh_seconds = float(ctx.settings.get("refresh_seconds", 10))


def _library() -> Library:
    if _shelf.library is None:
        raise RuntimeError("the librarian has not indexed anything yet (its startup hook did not run)")
    _shelf.library.ensure_fresh(_shelf.refresh_seconds)
    return _shelf.library


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["docs:read"])
def search(
    query: Annotated[str, Field(description="What to look for, in plain words.")],
    k: Annotated[int, Field(ge=1, le=MAX_K, description="How many passages to return.")] = 5,
) -> list[Passage]:
    """Find the passages of the workspace's documents closest in meaning to a query, best first.

    Each hit names its document and chunk number; `read` returns the chunk in full.
    """
    return _library().search(query, k)


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["docs:read"])
def read(
    document: Annotated[str, Field(description="Document path as listed by `list_documents` or `search`.")],
    chunk: Annotated[int | None, Field(description="Chunk number; omit it to read the whole document.")] = None,
) -> Reading:
    """Read one chunk of a document in full, or the whole document when no chunk is given."""
    return _library().read(document, chunk)


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["docs:read"])
def list_documents() -> list[DocumentInfo]:
    """List the indexed documents with how many chunks each was cut into."""
    return _library().documents()
