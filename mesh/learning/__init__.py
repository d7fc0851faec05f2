"""Agents that learn: plans derived from a system's spec, the learning loop, assessments, prompt versions.

``curriculum`` derives a plan; ``loop`` runs it against a ``target`` (the system's tools, through the
registry) with the configured model (``mesh.lm``); ``analysis`` turns failures into lessons; ``program`` is
the learner's DSPy program and its saved versions; ``assessment`` scores held-out tasks by the rubric;
``records`` keeps it all in the registry's database; ``routes`` serves it under ``/v1``.
"""
