"""A bare relay: copies each MCP request to one agent and its answer back, checking nothing.

    python bench/relay_floor.py --port P --target http://127.0.0.1:A/mcp

It is the floor under any Python proxy on this stack (uvicorn, Starlette, httpx2 on a kept-alive
connection, as the registry uses): ``bench_registry.py`` runs it beside the registry so the cost of
the hop itself and the cost of the registry's checks can be told apart in one run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PASSED_ON = ("accept", "content-type")


def passed_on(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers MCP needs on either side of the hop: ``MCP-*``, accept and content type."""
    return {k: v for k, v in headers.items() if k.startswith("mcp-") or k in PASSED_ON}


def relay_app(target: str) -> Starlette:
    http = httpx2.AsyncClient(timeout=None)

    async def relay(request: Request) -> Response:
        answer = await http.request(request.method, target, content=await request.body(),
                                    headers=passed_on(request.headers))
        return Response(answer.content, status_code=answer.status_code, headers=passed_on(answer.headers))

    async def health(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/mcp", relay, methods=["GET", "POST", "DELETE"]), Route("/healthz", health)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    uvicorn.run(relay_app(args.target), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
