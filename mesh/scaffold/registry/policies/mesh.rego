# mcpmesh authorization policy: the registry asks it before every cross-agent call.
#
# Input, one call:
#   {
#     "caller": {"id": "agent:librarian" | "user:local",
#                "kind": "agent" | "user",          # an unauthenticated caller: "anonymous"
#                "scopes": ["notes:read", ...],      # a user holding "*" holds every scope
#                "reputation": 0.0-1.0 | null,
#                "proficiency": {"petstore": 0.0-1.0, ...},   # latest assessed score per system (mesh learn)
#                "org": "default",                    # the organisation and project the caller acts in
#                "project": "default",                 # (an agent: its own; a person: X-Project-Id)
#                "role": "owner" | "admin" | "member" | "viewer" | "agent" | null},
#     "target": {"agent": "librarian", "tool": "search",
#                "annotations": {"readOnlyHint": bool, "destructiveHint": bool,
#                                "idempotentHint": bool, "openWorldHint": bool},   # any may be absent
#                "scopes": ["notes:read", ...],      # scopes the tool requires
#                "reputation": 0.0-1.0,
#                "probe": bool,                      # a probe call its half-open circuit breaker let through
#                "org": "default", "project": "default"},   # the project the target agent belongs to
#     "arguments": {...},
#     "credentials": [{"ref": "gh-token", "system": "github", "agent": "builder" | "*", "org": "default"}],
#                                                      # present when a call or sandbox would carry credentials
#     "budget": {"cost": 1,                            # cost units this call would spend
#                "budgets": [{"id": "acme-month", "scope": "org" | "agent", "org": "default", "agent": null,
#                             "period": "day" | "week" | "month" | "fixed", "period_start": "2026-11-01T00:00:00+00:00",
#                             "limit": 1000, "spent": 812.0, "remaining": 188.0, "fraction": 0.812,
#                             "state": "ok" | "alert" | "exceeded", "hard": true, "status": 402 | 429,
#                             "approve_overrun": false,   # past the limit: ask an approver, not refuse
#                             "override": {"id": ..., "expires_at": ..., "granted_by": ...}}]}
#   }                                                  # override: present only while an override is active
#
# Data, the [policy] table of registry/registry.toml:
#   min_reputation     deny a target scored below this (default 0.3)
#   allow_destructive  ["agent.tool", "agent.*", ...] destructive tools that may be called anyway
#   allow_anonymous    let callers that are neither an agent nor a user through (default false)
#   allow_credentials  ["agent.system", "agent.*", ...] where credentials may be attached (default: wherever
#                      the credential's own scope says)
#   approve_destructive  ["agent.tool", "agent.*", ...] destructive tools a person may approve call by call,
#                      instead of their being refused (allow_destructive still lets them through unasked)
#   approve_open_world ["agent.tool", "agent.*", ...] open-world tools (openWorldHint true) that need an approval
#   approver_roles     roles that may approve when a rule names none (default ["owner", "admin"])
#
# Output: data.mesh.authz.decision = {"allow": bool, "deny": [{"rule": name, "reason": text}, ...],
#                                     "approval_required": [{"rule": name, "reason": text, "roles": [...]}, ...]}.
# Any policy file may add `deny contains {"rule": ..., "reason": ...} if ...` to this package, or
# `approval_required contains {"rule": ..., "reason": ..., "roles": [...]} if ...`: a call no rule denies but
# some rule wants approved waits for a person holding one of the roles (mesh/registry/approvals.py); "roles"
# may be left out (approver_roles then). A denial always wins over an approval.
package mesh.authz

decision := {
	"allow": count(deny) + count(approval_required) == 0,
	"deny": deny,
	"approval_required": approval_required,
}

default approver_roles := ["owner", "admin"]

approver_roles := data.approver_roles

default min_reputation := 0.3

min_reputation := data.min_reputation

target_name := sprintf("%s.%s", [input.target.agent, input.target.tool])

# --- malformed_input: fail closed when the registry sends something this policy cannot judge.

malformed contains "caller.id must be a string" if not is_string(input.caller.id)

malformed contains "caller.kind must be a string" if not is_string(input.caller.kind)

malformed contains "caller.scopes must be an array" if not is_array(input.caller.scopes)

malformed contains "target.agent must be a string" if not is_string(input.target.agent)

malformed contains "target.tool must be a string" if not is_string(input.target.tool)

malformed contains "target.scopes must be an array" if not is_array(input.target.scopes)

malformed contains "target.reputation must be a number" if not is_number(input.target.reputation)

# Checked in one rule first: the per-field reasons are only worked out for a malformed input.
well_formed if {
	is_string(input.caller.id)
	is_string(input.caller.kind)
	is_array(input.caller.scopes)
	is_string(input.target.agent)
	is_string(input.target.tool)
	is_array(input.target.scopes)
	is_number(input.target.reputation)
}

deny contains {"rule": "malformed_input", "reason": problem} if {
	not well_formed
	some problem in malformed
}

# --- anonymous_caller: only agents and users, unless registry.toml allows anonymous callers.

deny contains {"rule": "anonymous_caller", "reason": sprintf("caller kind %v is not allowed", [input.caller.kind])} if {
	not input.caller.kind in {"agent", "user"}
	not data.allow_anonymous == true
}

# --- cross_project: a caller calls only agents of the project it acts in. The registry already answers a
# call to another project's agent as unknown; this rule is the policy's own statement of it, and the place to
# allow a pair of projects to work together (e.g. `not [input.caller.project, input.target.project] in ...`).

deny contains {"rule": "cross_project", "reason": sprintf("%v acts in %v/%v; %s belongs to %v/%v", [input.caller.id, input.caller.org, input.caller.project, target_name, input.target.org, input.target.project])} if {
	is_string(input.target.project)
	[input.caller.org, input.caller.project] != [input.target.org, input.target.project]
}

# --- missing_scope: the caller must hold every scope the tool requires.

holds_every_scope if {
	input.caller.kind == "user"
	"*" in input.caller.scopes
}

deny contains {"rule": "missing_scope", "reason": sprintf("%v lacks scope '%s' required by %s", [input.caller.id, scope, target_name])} if {
	not holds_every_scope
	some scope in input.target.scopes
	not scope in input.caller.scopes
}

# --- destructive_not_allowed: MCP's defaults apply to absent hints (readOnlyHint false,
# destructiveHint true), so a tool is destructive unless it says readOnlyHint: true or
# destructiveHint: false. An unannotated tool is therefore destructive.

read_only if input.target.annotations.readOnlyHint == true

destructive if {
	not read_only
	not input.target.annotations.destructiveHint == false
}

destructive_allowed if target_name in data.allow_destructive

destructive_allowed if sprintf("%s.*", [input.target.agent]) in data.allow_destructive

destructive_approvable if target_name in data.approve_destructive

destructive_approvable if sprintf("%s.*", [input.target.agent]) in data.approve_destructive

deny contains {"rule": "destructive_not_allowed", "reason": sprintf("%s is destructive and not in allow_destructive", [target_name])} if {
	destructive
	not destructive_allowed
	not destructive_approvable
}

# --- destructive_needs_approval: listed in approve_destructive (and not in allow_destructive): a person approves
# each call.

approval_required contains {"rule": "destructive_needs_approval", "reason": sprintf("%s is destructive", [target_name]), "roles": approver_roles} if {
	destructive
	not destructive_allowed
	destructive_approvable
}

# --- open_world_needs_approval: a tool that reaches outside the mesh (openWorldHint true), listed in
# approve_open_world.

open_world_approvable if target_name in data.approve_open_world

open_world_approvable if sprintf("%s.*", [input.target.agent]) in data.approve_open_world

approval_required contains {"rule": "open_world_needs_approval", "reason": sprintf("%s reaches outside the mesh", [target_name]), "roles": approver_roles} if {
	input.target.annotations.openWorldHint == true
	open_world_approvable
}

# --- low_reputation: stop calling a target the mesh has learned not to trust. A call marked as a probe
# (the target's circuit breaker is half-open and let it through) still goes, or the target could never earn its
# way back.

deny contains {"rule": "low_reputation", "reason": sprintf("%s reputation %v is below %v", [target_name, input.target.reputation, min_reputation])} if {
	is_number(input.target.reputation)
	input.target.reputation < min_reputation
	not input.target.probe == true
}

# --- budget_exceeded: a call whose cost would take a budget with a hard limit past it waits for the next
# period, unless an admin's override is active. The registry answers with the budget's status (402 or 429).
# A budget with approve_overrun asks an approver instead (budget_override): a yes grants an override.

budget_overrun(b) if {
	b.hard == true
	b.remaining < input.budget.cost
	not b.override
}

deny contains {"rule": "budget_exceeded", "reason": sprintf("budget %v: %v of %v cost units spent this %v period, the call costs %v", [b.id, b.spent, b.limit, b.period, input.budget.cost])} if {
	some b in input.budget.budgets
	budget_overrun(b)
	not b.approve_overrun == true
}

approval_required contains {"rule": "budget_override", "reason": sprintf("budget %v: %v of %v cost units spent this %v period, the call costs %v", [b.id, b.spent, b.limit, b.period, input.budget.cost]), "roles": approver_roles} if {
	some b in input.budget.budgets
	budget_overrun(b)
	b.approve_overrun == true
}

# --- credential_not_allowed: a credential (by its secret_ref) goes only to the agent and target system it is
# stored for; when [policy] allow_credentials is set, only to the agent.system pairs it lists as well.

credential_for_target(credential) if credential.agent == input.target.agent

credential_for_target(credential) if credential.agent == "*"

credential_listed(_) if not data.allow_credentials

credential_listed(credential) if sprintf("%s.%s", [input.target.agent, credential.system]) in data.allow_credentials

credential_listed(_) if sprintf("%s.*", [input.target.agent]) in data.allow_credentials

deny contains {"rule": "credential_not_allowed", "reason": sprintf("credential %v is not for agent %v", [credential.ref, input.target.agent])} if {
	some credential in input.credentials
	not credential_for_target(credential)
}

deny contains {"rule": "credential_not_allowed", "reason": sprintf("credential %v for %v.%v is not in allow_credentials", [credential.ref, input.target.agent, credential.system])} if {
	some credential in input.credentials
	credential_for_target(credential)
	not credential_listed(credential)
}

