"""Testing agents: a real mesh for them (`mesh_fixture`, `running_mesh`), and recorded journals
checked against the current code (`replay_folder`).

    from agentmesh.testing import replay_folder
    def test_journals_still_replay():
        reports = replay_folder("tests/journals", "my_agents.py")
        assert all(r.ok for r in reports), [r.problem for r in reports if not r.ok]

Journals come from `agentmesh export TASK_ID --out FILE` (a task of any state); `agentmesh replay`
runs the same check from the command line.
"""

from agentmesh.testing.mesh import AgentMesh, mesh_fixture, registered, running_mesh
from agentmesh.testing.replay import ReplayReport, load_journal, replay_folder, replay_journal

__all__ = [
    "AgentMesh",
    "ReplayReport",
    "load_journal",
    "mesh_fixture",
    "registered",
    "replay_folder",
    "replay_journal",
    "running_mesh",
]
