"""``mesh budgets [ls]``, ``set``, ``rm``, ``override``: the budgets of ``budgets.py`` over the registry's routes.

Kept apart from ``budgets.py`` so that the ``mesh`` command does not import the registry's store to parse
its arguments.
"""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any, client: Any, late_client: Any, commands: dict[str, Any]) -> None:
    """``mesh budgets``: list them with this period's spend; set, remove, override (owners and admins)."""
    p = sub.add_parser("budgets", parents=[client], help="budgets with this period's spend; set, remove, override")
    budgets_sub = p.add_subparsers(dest="budgets_command")
    budgets_sub.add_parser("ls", parents=[late_client], help="every budget with this period's spend (the default)")
    p = budgets_sub.add_parser("set", parents=[late_client], help="create or replace a budget")
    p.add_argument("budget_id", metavar="ID", help="the budget's name, e.g. org-month")
    p.add_argument("--limit", type=float, required=True, help="cost units per period")
    p.add_argument("--agent", default=None, help="an agent's budget (default: the organisation's)")
    p.add_argument("--org", default=None, help="the organisation (default: the registry's default one)")
    p.add_argument("--period", choices=("day", "week", "month", "fixed"), default="month")
    p.add_argument("--starts-at", default=None, help="a fixed period's start (ISO 8601 with offset)")
    p.add_argument("--ends-at", default=None, help="a fixed period's end")
    p.add_argument("--alerts", default=None, help="fractions of the limit that alert, e.g. 0.8,1.0 (the default)")
    p.add_argument("--soft", action="store_true", help="alert only: never refuse calls")
    p.add_argument("--status", type=int, choices=(402, 429), default=429, help="how a refusal answers")
    p = budgets_sub.add_parser("rm", parents=[late_client], help="remove a budget made through the API")
    p.add_argument("budget_id", metavar="ID")
    p = budgets_sub.add_parser("override", parents=[late_client], help="let calls past a hard limit for a while")
    p.add_argument("budget_id", metavar="ID")
    p.add_argument("--hours", type=float, default=1.0, help="how long (default 1)")
    p.add_argument("--reason", default="", help="why, kept in the audit log")
    commands["budgets"] = lambda args: budgets_command(args.registry.rstrip("/"), args)


def budgets_command(base_url: str, args: Any) -> int:
    from mesh.tables import _command

    return _command(_budgets_command)(base_url, args)


def _budgets_command(client: Any, args: Any) -> int:
    from mesh.tables import RegistryProblem, _request, problem_line, render, terminal_width

    action = args.budgets_command
    if action == "set":
        body: dict[str, Any] = {"id": args.budget_id, "limit": args.limit, "period": args.period,
                                "hard": not args.soft, "status": args.status}
        if args.agent:
            body |= {"scope": "agent", "agent": args.agent}
        body |= {key: value for key, value in (("org", args.org), ("starts_at", args.starts_at),
                                               ("ends_at", args.ends_at)) if value}
        if args.alerts:
            try:
                body["alerts"] = [float(part) for part in args.alerts.split(",") if part.strip()]
            except ValueError as exc:
                raise RegistryProblem(f"--alerts takes fractions separated by commas, e.g. 0.8,1.0: {exc}") from exc
        shown = _request(client, "POST", "/v1/budgets", json=body)
        print(f"{shown['id']}: {shown['limit']:g} cost units a {shown['period']}, {shown['current']['spent']:g} spent")
        return 0
    if action == "rm":
        response = client.delete(f"/v1/budgets/{args.budget_id}")
        if response.is_error:
            raise RegistryProblem(problem_line(response))
        print(f"{args.budget_id}: removed")
        return 0
    if action == "override":
        granted = _request(client, "POST", f"/v1/budgets/{args.budget_id}/override",
                           json={"hours": args.hours, "reason": args.reason})
        print(f"{args.budget_id}: calls may pass its hard limit until {granted['expires_at']} "
              f"(override {granted['id']})")
        return 0
    rows = []
    for budget in _request(client, "GET", "/v1/budgets")["budgets"]:
        current = budget["current"] or {}
        whose = budget["agent"] if budget["scope"] == "agent" else f"org {budget['org']}"
        rows.append([budget["id"], whose, budget["period"], current.get("spent"), budget["limit"],
                     f"{round(current['fraction'] * 100)}%" if current else "-", current.get("state", "inactive"),
                     f"{'hard ' + str(budget['status']) if budget['hard'] else 'soft'}"
                     + (" (override)" if budget["overrides"] else "")])
    print(render(["BUDGET", "WHOSE", "PERIOD", "SPENT", "LIMIT", "USED", "STATE", "LIMIT KIND"], rows,
                 width=terminal_width()))
    return 0
