"""The CLI's current project: which organisation's project ``mesh`` commands act in.

``mesh project use ORG/PROJECT`` keeps it in the workspace's ``.mesh/project``; ``$MESH_PROJECT`` overrides
it. Every command that talks to a registry sends it as the ``X-Project-Id`` header (``login.headers``); with
neither, nothing is sent and the registry places a person in the ``default`` project of their organisation
(``mesh.registry.tenancy``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mesh.workspace import Workspace

PROJECT_FILE = "project"
PROJECT_VARIABLE = "MESH_PROJECT"
HEADER = "X-Project-Id"


def project_path(workspace: Workspace) -> Path:
    return workspace.state_dir / PROJECT_FILE


def current(workspace: Workspace) -> str | None:
    """``$MESH_PROJECT``, else what ``mesh project use`` kept, else None."""
    if os.environ.get(PROJECT_VARIABLE):
        return os.environ[PROJECT_VARIABLE].strip()
    path = project_path(workspace)
    return path.read_text().strip() or None if path.is_file() else None


def use(workspace: Workspace, project: str | None) -> Path:
    """Make ``project`` (ORG/PROJECT) the current one; None goes back to the default. A ValueError names a
    malformed one; whether it exists is the registry's to say, on the next command."""
    from mesh.registry.tenancy import Tenant

    path = project_path(workspace)
    if project is None:
        path.unlink(missing_ok=True)
        return path
    Tenant.parse(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(project + "\n")
    return path


def header(workspace: Workspace) -> dict[str, str]:
    project = current(workspace)
    return {HEADER: project} if project else {}
