"""Whether an action cut off mid-run may run again, as its tool declares (ToolSpec.repeat).

The retry rules read each tool's declaration from the executor's catalogue (workers.ToolCatalogue)
instead of a list of tool names written into the coordinator.
"""

from __future__ import annotations

from protos.agentmesh.v1 import common_pb2 as pb


def why_not_repeatable(action: pb.Action, specs: dict[str, pb.ToolSpec]) -> str:
    """Why running the action again could do harm, as its tool declares; "" when it could not.
    Inference only costs money. An exec action is judged by its tool's declaration and how it runs:
    a sandboxed tool's effects are thrown away with its sandbox only in full isolation without
    network. A tool the executor does not declare (or a catalogue not fetched yet) counts as unsafe."""
    if action.WhichOneof("kind") != "exec":
        return ""
    tool = action.exec.tool
    spec = specs.get(tool)
    repeat = spec.repeat if spec is not None else pb.REPEAT_SAFETY_UNSPECIFIED
    if repeat == pb.REPEAT_SAFETY_SAFE:
        return ""
    if repeat == pb.REPEAT_SAFETY_SANDBOXED:
        if action.exec.network:
            return f"{tool} ran with network, so its effects may reach beyond its sandbox"
        if action.exec.isolation not in ("", "full"):
            return f"{tool} ran with {action.exec.isolation} isolation, on the executor's own filesystem"
        return ""
    if spec is None:
        return f"the executor does not declare {tool!r} safe to repeat (its tools could not be read)"
    return f"the executor declares {tool} unsafe to repeat"
