"""Following a learning run from an agent's tool, as MCP progress notifications.

An agent that offers learning as a tool starts the run through the registry and reports its progress to
whoever called the tool (``ctx.report_progress``); the registry relays those notifications up the chain like
any other. Progress only grows: it counts the attempts made so far, the total is the budget's worst case.

    @agent.tool()
    async def learn(system: str, ctx: Context) -> dict:
        return await learn_with_progress(agent.mesh, agent.name, system, ctx.report_progress)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

Report = Callable[[float, float | None, str | None], Awaitable[Any]]


async def learn_with_progress(client: Any, agent: str, system: str, report: Report, *,
                              budget: dict[str, int] | None = None, poll_seconds: float = 0.25) -> dict[str, Any]:
    """Plan (if the agent has none for ``system``), run, and follow the run to its end; returns the run."""
    plans = (await client._request("GET", f"/v1/agents/{agent}/learning-plans"))["plans"]
    plan = next((p for p in plans if p["system"] == system), None)
    if plan is None:
        plan = await client._request("POST", f"/v1/agents/{agent}/learning-plans", json={"system": system})
    run = await client._request("POST", f"/v1/learning-plans/{plan['id']}/run", json={"budget": budget or {}})
    training = sum(not task["held_out"] for task in plan["tasks"])
    total = float(training * run["budget"]["iterations"])
    reported, finished_attempts = -1.0, 0
    while True:
        run = await client._request("GET", f"/v1/learning-runs/{run['id']}")
        finished_attempts = sum(i["attempted"] for i in run["iterations"])
        progress = run.get("progress") or {}
        current = progress.get("done", 0) if progress.get("phase") == "attempt" else 0
        done = float(max(finished_attempts + current, reported, 0))
        if run["status"] != "running":
            await report(max(done, reported + 1), total, f"{run['status']}: {run.get('reason') or ''}")
            return run
        if done > reported:
            await report(done, total, f"iteration {progress.get('iteration', '-')}: {progress.get('task', '')}")
            reported = done
        await anyio.sleep(poll_seconds)
