"""mcpmesh: a mesh of agents, each its own MCP server with signed tools, resources and prompts.

The small public API: ``Agent`` and ``ToolKit`` to write agents (tools, resources, templates, prompts,
completions), ``AgentContext`` for their startup hooks, ``Workspace`` to read a workspace folder, and
``MeshClient`` to reach the mesh.
"""

from mesh.agent import Agent, AgentContext, ToolKit
from mesh.workspace import Workspace

__all__ = ["Agent", "AgentContext", "ToolKit", "Workspace"]
__version__ = "0.1.0"
