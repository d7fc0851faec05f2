"""Rebuild ``catalogue.json``: install public MCP servers from npm, run each over stdio, save its tools/list.

Run: ``python bench/data/extract_tools.py [WORKDIR]`` (needs node and npm; WORKDIR defaults to a
temporary folder). Each package is installed with ``--ignore-scripts`` (no browser downloads), started
with placeholder API keys (listing tools needs none), asked ``initialize`` then ``tools/list`` in raw
newline-delimited JSON-RPC, and stopped. Input schemas are kept to parameter names and descriptions;
each agent records the package and version it came from. The repository's own agents are not in the
file: the benchmark reads them from ``manifests/``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVERS = {  # npm package -> the agent name it is registered under
    "@amap/amap-maps-mcp-server": "amap-maps",
    "@antv/mcp-server-chart": "antv-chart",
    "@baidumap/mcp-server-baidu-map": "baidu-map",
    "@drawio/mcp": "drawio",
    "@eslint/mcp": "eslint",
    "@h1deya/mcp-server-weather": "us-weather",
    "@jzone-mcp/antd-components-mcp": "antd-components",
    "@kimtaeyoon83/mcp-server-youtube-transcript": "youtube-transcript",
    "@modelcontextprotocol/server-aws-kb-retrieval": "aws-kb-retrieval",
    "@modelcontextprotocol/server-brave-search": "brave-search",
    "@modelcontextprotocol/server-everart": "everart",
    "@modelcontextprotocol/server-everything": "everything",
    "@modelcontextprotocol/server-filesystem": "filesystem",
    "@modelcontextprotocol/server-github": "github",
    "@modelcontextprotocol/server-gitlab": "gitlab",
    "@modelcontextprotocol/server-google-maps": "google-maps",
    "@modelcontextprotocol/server-memory": "memory",
    "@modelcontextprotocol/server-postgres": "postgres",
    "@modelcontextprotocol/server-puppeteer": "puppeteer",
    "@modelcontextprotocol/server-redis": "redis",
    "@modelcontextprotocol/server-sequential-thinking": "sequential-thinking",
    "@modelcontextprotocol/server-slack": "slack",
    "@mzxrai/mcp-webresearch": "webresearch",
    "@notionhq/notion-mcp-server": "notion",
    "@openbnb/mcp-server-airbnb": "airbnb",
    "@playwright/mcp": "playwright",
    "@upstash/context7-mcp": "context7",
    "@variflight-ai/variflight-mcp": "variflight",
    "@wonderwhy-er/desktop-commander": "desktop-commander",
    "chrome-devtools-mcp": "chrome-devtools",
    "duckduckgo-mcp-server": "duckduckgo",
    "edgeone-pages-mcp": "edgeone-pages",
    "exa-mcp-server": "exa",
    "firecrawl-mcp": "firecrawl",
    "howtocook-mcp": "howtocook",
    "mcp-server-code-runner": "code-runner",
    "mcp-server-kubernetes": "kubernetes",
    "open-meteo-mcp-server": "open-meteo",
    "tavily-mcp": "tavily",
    "universal-db-mcp": "universal-db",
}
ARGUMENTS = {
    "@modelcontextprotocol/server-everything": ["stdio"],
    "@modelcontextprotocol/server-filesystem": ["/tmp"],
    "@modelcontextprotocol/server-postgres": ["postgresql://localhost/db"],
    "@modelcontextprotocol/server-redis": ["redis://localhost:6379"],
}
PLACEHOLDER_KEYS = (
    "AMAP_MAPS_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "BAIDU_MAP_API_KEY", "BRAVE_API_KEY",
    "EVERART_API_KEY", "EXA_API_KEY", "FIRECRAWL_API_KEY", "GITHUB_PERSONAL_ACCESS_TOKEN",
    "GITLAB_PERSONAL_ACCESS_TOKEN", "GOOGLE_MAPS_API_KEY", "NOTION_TOKEN", "SLACK_BOT_TOKEN", "SLACK_TEAM_ID",
    "TAVILY_API_KEY", "VARIFLIGHT_API_KEY",
)


def install(package: str, workdir: Path) -> Path:
    folder = workdir / package.replace("@", "_").replace("/", "_")
    environment = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    command = ["npm", "install", "--prefix", str(folder), "--ignore-scripts", "--no-audit", "--no-fund", package]
    subprocess.run(command, check=True, capture_output=True, env=environment, timeout=600)
    return folder / "node_modules" / package


def entry_point(package_dir: Path) -> tuple[Path, dict[str, Any]]:
    meta = json.loads((package_dir / "package.json").read_text())
    command = meta.get("bin") or meta.get("main", "index.js")
    if isinstance(command, dict):
        command = next(iter(command.values()))
    return package_dir / command, meta


def list_tools(script: Path, arguments: list[str], timeout: float = 40) -> list[dict[str, Any]]:
    """``initialize`` then ``tools/list`` over the server's stdio."""
    environment = {**os.environ, **dict.fromkeys(PLACEHOLDER_KEYS, "placeholder"), "AWS_REGION": "us-east-1"}
    process = subprocess.Popen(["node", str(script), *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=environment, cwd=tempfile.gettempdir(),
                               start_new_session=True)

    def send(message: dict[str, Any]) -> None:
        process.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        process.stdin.flush()

    def answer(request_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([process.stdout], [], [], 0.5)[0]:
                continue
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the server exited")
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a log line on stdout
            if message.get("id") == request_id:
                return message["result"]
        raise TimeoutError(f"no answer to request {request_id}")

    try:
        client = {"name": "mcpmesh-bench", "version": "0"}
        send({"id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}})
        answer(1)
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/list", "params": {}})
        return answer(2)["tools"]
    finally:
        os.killpg(process.pid, signal.SIGKILL)


def slim(tool: dict[str, Any]) -> dict[str, Any]:
    """The wire tool with its input schema cut to parameter names and descriptions."""
    properties = (tool.get("inputSchema") or {}).get("properties") or {}
    wire: dict[str, Any] = {"name": tool["name"]}
    if tool.get("title"):
        wire["title"] = tool["title"]
    wire["description"] = tool.get("description") or ""
    described = {name: spec.get("description") if isinstance(spec, dict) else None for name, spec in properties.items()}
    wire["inputSchema"] = {"type": "object", "properties": {
        name: {"description": text} if isinstance(text, str) else {} for name, text in described.items()}}
    if tool.get("annotations"):
        wire["annotations"] = {k: v for k, v in tool["annotations"].items() if k.endswith("Hint")}
    return wire


def main(argv: list[str]) -> None:
    workdir = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="mcp-servers-"))
    agents = []
    for package, agent in SERVERS.items():
        try:
            script, meta = entry_point(install(package, workdir))
            tools = list_tools(script, ARGUMENTS.get(package, []))
        except Exception as exc:  # one server failing leaves the others
            print(f"skipped {package}: {exc!r}", file=sys.stderr)
            continue
        print(f"{package} {meta['version']}: {len(tools)} tools")
        agents.append({"agent": agent, "description": meta.get("description") or "",
                       "source": {"registry": "npm", "package": package, "version": meta["version"],
                                  "license": meta.get("license")},
                       "tools": [slim(tool) for tool in tools]})
    document = {
        "about": "Tool definitions of public MCP servers as their own tools/list returns them (npm packages run over "
                 "stdio by bench/data/extract_tools.py; input schemas kept to parameter names and descriptions). "
                 "The agent name is a short name for the package; its description is the package's own.",
        "agents": sorted(agents, key=lambda entry: entry["agent"]),
    }
    (HERE / "catalogue.json").write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
