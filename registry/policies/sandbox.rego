# Sandboxes (docs/sandboxes.md): the `sandbox` agent's sandbox_* tools take a sandbox's description as an
# argument and trust it. The registry's sandbox front (/agents/AGENT/sandboxes/ID/mcp, and the state
# route) checks that the sandbox exists, is active and, in connected mode, is approved, then carries the
# call with the caller marked by scope "registry:sandbox-front". A direct call (POST /v1/invoke, /mcp)
# carries a description nobody checked, so it is refused here.
package mesh.authz

sandbox_front_tools := {"sandbox_call", "sandbox_state", "sandbox_connected_call"}

deny contains {"rule": "sandbox_front_only", "reason": sprintf("%s is called through a sandbox's endpoint (/agents/AGENT/sandboxes/ID/mcp), not directly", [target_name])} if {
	input.target.agent == "sandbox"
	input.target.tool in sandbox_front_tools
	not "registry:sandbox-front" in input.caller.scopes
}
