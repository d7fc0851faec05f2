"""The agent builder: a natural-language brief becomes a signed, running, specialised mesh agent.

One step per module, in the order a build runs:

- ``blueprint``: the brief, read by the configured model into a typed ``Blueprint`` (or questions back);
- ``kit``: the tools the role gets, from the registry's verified tools and the workspace's tool kits;
- ``pack``: the instructions pack (Jinja2 templates), optimised with DSPy against role tasks;
- ``tasks``: role tasks with a rubric, and the judge that scores answers by it;
- ``module``: ``agents/NAME.py`` and the files beside it, written and signed;
- ``validation``: the new agent against a generic one on held-out tasks;
- ``runtime``: what a built agent imports to answer with its pack;
- ``service``, ``routes``, ``cli``: the builder in the registry (``POST /v1/builder``) and ``mesh build``.

The model comes from ``mesh.lm`` (shared with the learning loop); every prompt's context comes from the
workspace's records through ``mesh.knowledge``'s ``ContextBudgeter``.
"""

from mesh.builder.blueprint import BlueprintProblem, Draft, read_brief

__all__ = ["BlueprintProblem", "Draft", "read_brief"]
