"""A tool kit any agent of this workspace can mount with `agent.mount("text")`."""

from mesh import ToolKit

kit = ToolKit("text")


@kit.tool(read_only=True, idempotent=True, open_world=False)
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())
