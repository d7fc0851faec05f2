"""A first agent: greets people and counts words with the `text` tool kit."""

from mesh import Agent

agent = Agent("hello", version="0.1.0", description="Greets people; counts words with the text kit.")
agent.mount("text")


@agent.tool(read_only=True, idempotent=True, open_world=False)
def greet(name: str) -> str:
    """Say hello to someone by name."""
    return f"Hello, {name}!"
