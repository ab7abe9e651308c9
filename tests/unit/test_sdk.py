"""The SDK's stepping and replay, driven in memory the way the coordinator drives it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from pydantic import BaseModel

from agentmesh.sdk import ActionFailed, AgentError, Context, agent
from agentmesh.sdk.commands import Command
from agentmesh.sdk.results import Outcome, Status
from agentmesh.sdk.run import Recorded, Run, Unready, replay
from tests.unit.sdk_sim import answers, drive, failed, ok


def echo_answer(command: Command) -> Outcome:
    if command.kind == "infer":
        return ok({"text": f"text-{command.body['seed']}", "finish_reason": "stop"})
    if command.kind == "input":
        return ok({"ok": True})
    if command.kind == "spawn":
        return ok({"children": [{"id": "c1", "state": "SUCCEEDED", "result": {"child": 1}}]})
    if command.kind == "sleep":
        return ok({"slept_s": command.body["seconds"]})
    code = command.body["args"].get("code", "")
    if command.target == "python" and "fail" in code:
        return failed(exit_code=1, stderr="boom")
    return ok(command.body["args"], stdout=code)


@agent(name="wide", version="1")
async def wide(ctx: Context, inp: dict) -> dict:
    logs = await ctx.exec("shell", command="journalctl -n 5")
    plans = await ctx.gather(*(ctx.infer(f"plan from {logs.stdout}", seed=i) for i in range(3)))
    win = await ctx.first(
        [ctx.exec("python", code=("fail" if i < 2 else "") + p.text) for i, p in enumerate(plans)]
    )
    ok_ = await ctx.input("apply?")
    kid = await ctx.spawn("verify", {"host": "h"})
    await ctx.sleep(1.5)
    ctx.emit("done", {"winner": win.stdout})
    return {"win": win.stdout, "ok": ok_, "child": kid.result, "id": str(ctx.uuid()), "now": ctx.now()}


def test_steps_follow_the_calls_and_positions_are_handed_out_in_call_order():
    final, journal, steps = drive(wide, echo_answer)
    assert final.ok, final
    result = json.loads(final.result_json)
    assert result["win"] == "text-2" and result["child"] == {"child": 1} and result["ok"] == {"ok": True}
    kinds = [[c.kind.value for c in s.commands] for s in steps]
    assert kinds == [["exec"], ["infer"] * 3, ["exec"] * 3, ["input"], ["spawn"], ["sleep"], []]
    # Positions are handed out as ctx.* is called, in argument order.
    assert [c.position for s in steps for c in s.commands] == list(range(10))
    assert steps[-1].events == [("done", {"winner": "text-2"})]
    # ctx.now() is the clock the decision was taken at.
    assert result["now"] == 1_000.0 + len(steps)


def test_replay_from_the_journal_takes_the_same_path():
    warm = drive(wide, echo_answer)
    cold = drive(wide, echo_answer, replay_every_step=True)
    assert cold[0] == warm[0]
    assert cold[1] == warm[1]
    # Events come once: a replayed decision's emits are not handed out again.
    assert [s.events for s in cold[2]] == [s.events for s in warm[2]]


def test_a_failed_action_raises_unless_check_is_false():
    @agent(name="checks")
    async def checks(ctx: Context, inp: dict) -> dict:
        soft = await ctx.exec("python", code="fail", check=False)
        try:
            await ctx.exec("python", code="fail again")
        except ActionFailed as exc:
            return {"soft": soft.exit_code, "reason": exc.reason, "stderr": exc.result.stderr}
        return {}

    final, _, _ = drive(checks, echo_answer)
    assert json.loads(final.result_json) == {"soft": 1, "reason": "EXIT_STATUS", "stderr": "boom"}


def test_gather_raises_the_first_failure_and_settled_never_raises():
    @agent(name="combos")
    async def combos(ctx: Context, inp: dict) -> dict:
        both = await ctx.settled(ctx.exec("python", code="fail"), ctx.exec("echo", v=1))
        try:
            await ctx.gather(ctx.exec("echo", v=2), ctx.exec("python", code="fail"))
        except ActionFailed:
            raised = True
        return {"settled": [s.ok for s in both], "raised": raised}

    final, _, _ = drive(combos, echo_answer)
    assert json.loads(final.result_json) == {"settled": [False, True], "raised": True}


def test_first_with_where_waits_for_its_branches_and_picks_by_the_predicate():
    @agent(name="where")
    async def where(ctx: Context, inp: dict) -> dict:
        win = await ctx.first([ctx.exec("echo", n=n) for n in range(4)], where=lambda r: r.output["n"] >= 2)
        return {"n": win.output["n"]}

    final, _, steps = drive(where, echo_answer)
    assert json.loads(final.result_json) == {"n": 2}
    # Results one at a time: once n=2 wins, the one still running is given up, to be cancelled.
    final, _, steps = drive(where, echo_answer, batch=1)
    assert json.loads(final.result_json) == {"n": 2}
    assert [s.cancel for s in steps] == [[], [], [], [(1, 3)]]


def test_work_that_needs_one_result_starts_as_soon_as_that_result_is_in():
    """Two chains in a gather: each chain's next step is asked for as soon as its own step settles,
    not once the other chain's has too, and a replay hands the results in the same order."""

    async def chain(ctx: Context, name: str, n: int) -> list:
        return [(await ctx.exec("echo", chain=name, i=i)).output["i"] for i in range(n)]

    @agent(name="chains")
    async def chains(ctx: Context, inp: dict) -> list:
        return await ctx.gather(chain(ctx, "a", 3), chain(ctx, "b", 2))

    final, journal, steps = drive(chains, echo_answer, batch=1)
    assert json.loads(final.result_json) == [[0, 1, 2], [0, 1]]
    asked = [[(c.body["args"]["chain"], c.body["args"]["i"]) for c in s.commands] for s in steps]
    assert asked == [[("a", 0), ("b", 0)], [("a", 1)], [("b", 1)], [("a", 2)], [], []]
    # b's end asks for nothing new: that decision is idle, not recorded, and its result is handed
    # in again with a's last one.
    assert [s.idle for s in steps] == [False, False, False, False, True, False]
    assert len(journal) == 4
    assert drive(chains, echo_answer, batch=1, replay_every_step=True)[:2] == (final, journal)


def test_sub_coroutines_in_a_gather_number_their_actions_deterministically():
    async def pair(ctx: Context, i: int) -> int:
        a = await ctx.exec("echo", i=i, half=0)
        b = await ctx.exec("echo", i=i, half=a.output["half"] + 1)
        return b.output["half"] + i

    @agent(name="nested")
    async def nested(ctx: Context, inp: dict) -> list:
        return await ctx.gather(*(pair(ctx, i) for i in range(3)))

    final, journal, steps = drive(nested, echo_answer)
    assert json.loads(final.result_json) == [1, 2, 3]
    assert [len(s.commands) for s in steps] == [3, 3, 0]
    assert drive(nested, echo_answer, replay_every_step=True)[:2] == (final, journal)


def changed(journal: list[Recorded], at: int, fingerprint: str) -> list[Recorded]:
    record = journal[at]
    return [
        *journal[:at],
        replace(record, fingerprints=(fingerprint, *record.fingerprints[1:])),
        *journal[at + 1 :],
    ]


def test_code_that_asks_for_something_else_stops_with_nondeterminism():
    final, journal, _ = drive(wide, echo_answer)
    run, stopped = replay(wide, "task-1", None, changed(journal, 0, "exec:shell:0000000000000000"))
    assert stopped is not None and stopped.final is not None
    error = stopped.final
    assert error.reason == "NONDETERMINISM"
    assert error.details["position"] == 0
    assert error.details["journal_fingerprint"] == "exec:shell:0000000000000000"
    assert error.details["code_fingerprint"].startswith("exec:shell:")
    assert error.details["agent"] == "wide" and error.details["version"] == "1"
    assert error.details["call_site"].endswith(f"test_sdk.py:{wide.fn.__code__.co_firstlineno + 2}")
    assert "action 0" in error.message


def test_code_that_stops_asking_stops_with_nondeterminism():
    @agent(name="short")
    async def short(ctx: Context, inp: dict) -> dict:
        await ctx.exec("shell", command="journalctl -n 5")
        return {}

    _, journal, _ = drive(wide, echo_answer)
    _, stopped = replay(short, "task-1", None, journal)
    assert stopped is not None and stopped.final.reason == "NONDETERMINISM"
    assert stopped.final.details["position"] == 1 and stopped.final.details["code_fingerprint"] == ""


def test_patched_takes_the_new_path_only_where_the_change_first_ran():
    def make(change: str):
        @agent(name="evolving")
        async def evolving(ctx: Context, inp: dict) -> str:
            await ctx.exec("echo", step=1)
            await ctx.exec("echo", step=2)
            if change == "unguarded" or (change == "patched" and ctx.patched("step-three")):
                return (await ctx.exec("python", code="new")).stdout
            return str((await ctx.exec("echo", step=3)).output)

        return evolving

    old, unguarded, patched = make("old"), make("unguarded"), make("patched")
    _, journal, _ = drive(old, echo_answer)
    # A task whose old code already asked for step three: unguarded, the change is caught ...
    _, stopped = replay(unguarded, "task-1", None, journal[:3])
    assert stopped is not None and stopped.final.reason == "NONDETERMINISM"
    assert stopped.final.details["position"] == 2
    # ... and behind ctx.patched the replay keeps the old path, then finishes on it.
    run, stopped = replay(patched, "task-1", None, journal[:3])
    assert stopped is None
    step = run.advance(4, 2_000.0, answers(3, ok({"step": 3})))
    assert json.loads(step.final.result_json) == "{'step': 3}"
    # A task that had not reached step three yet takes the new path from there.
    run, stopped = replay(patched, "task-1", None, journal[:2])
    assert stopped is None
    assert [c.target for c in run.advance(3, 2_000.0, answers(2, ok({"step": 2}))).commands] == ["python"]
    # A fresh task takes the new path and records the patch, and its own replay agrees.
    final, fresh, steps = drive(patched, echo_answer)
    assert json.loads(final.result_json) == "new"
    assert "step-three" in steps[2].memo["patches"]
    assert drive(patched, echo_answer, replay_every_step=True)[:2] == (final, fresh)


class Order(BaseModel):
    item: str
    qty: int


def test_input_is_checked_and_parsed_by_its_model():
    @agent(name="shop", input=Order)
    async def shop(ctx: Context, inp: Order) -> dict:
        approval = await ctx.input("ok?", schema=Order)
        return {"item": inp.item, "again": approval.qty}

    assert shop.input.violations({"item": "x"}) == [("qty", "Field required")]
    final, _, _ = drive(shop, lambda c: ok({"item": "y", "qty": 2}), {"item": "x", "qty": 1})
    assert json.loads(final.result_json) == {"item": "x", "again": 2}
    final, _, _ = drive(shop, lambda c: ok({"item": "y"}), {"item": "x", "qty": 1})
    assert final.reason == "INVALID_INPUT" and "qty" in final.message


def test_bad_agent_code_fails_with_a_reason_and_traceback():
    @agent(name="bad")
    async def bad(ctx: Context, inp: dict) -> dict:
        await ctx.exec("echo")
        return {}["missing"]

    final, _, _ = drive(bad, echo_answer)
    assert final.reason == "AGENT_ERROR" and final.message == "KeyError: 'missing'"
    assert "test_sdk.py" in final.details["traceback"]


def test_awaiting_something_foreign_is_refused():
    class Foreign:
        def __await__(self):
            yield "not a handle"

    @agent(name="foreign")
    async def foreign(ctx: Context, inp: dict) -> dict:
        await Foreign()
        return {}

    final, _, _ = drive(foreign, echo_answer)
    assert final.reason == "FOREIGN_AWAIT"


def test_strict_mode_stops_wall_clock_reads_in_agent_code_even_when_caught():
    import time

    @agent(name="clocky")
    async def clocky(ctx: Context, inp: dict) -> float:
        try:
            return time.time()
        except Exception:  # noqa: BLE001 - the agent swallows it; the run still stops
            return 0.0

    run = Run(clocky, "t", {}, strict=True)
    step = run.advance(1, 5.0, [])
    assert step.final is not None and step.final.reason == "NONDETERMINISTIC_CALL"
    assert "ctx.now()" in step.final.message
    # Not strict: it runs (production default), and library code is never affected.
    assert Run(clocky, "t", {}, strict=False).advance(1, 5.0, []).final.ok
    assert time.time() > 0


def test_results_must_match_the_decision_they_answer():
    from agentmesh.sdk.run import ProtocolError

    run = Run(wide, "t", {})
    run.advance(1, 1.0, [])
    with pytest.raises(ProtocolError):
        run.advance(2, 2.0, answers(1, ok(), ok()))  # one action asked, two results given
    with pytest.raises(ProtocolError):
        run.advance(5, 2.0, answers(1, ok()))


def test_a_10000_action_agent_steps_in_linear_time():
    @agent(name="long")
    async def long(ctx: Context, inp: dict) -> int:
        for i in range(10_000):
            await ctx.exec("echo", i=i)
        return 1

    final, journal, _ = drive(long, lambda c: Outcome(Status.OK, output=c.body["args"]), max_steps=10_001)
    assert final.ok and len(journal) == 10_000
    run, stopped = replay(long, "task-1", None, journal)
    assert stopped is None and run.issued == 10_000


def test_cancel_reaches_the_agent_and_shielded_cleanup_replays():
    from agentmesh.sdk import Cancelled

    @agent(name="careful")
    async def careful(ctx: Context, inp: dict) -> dict:
        try:
            await ctx.exec("shell", command="sleep 600")
        except Cancelled:
            with pytest.raises(Cancelled):
                ctx.exec("echo", step="unshielded")
            async with ctx.shield():
                await ctx.gather(ctx.exec("echo", step="undo"), ctx.exec("echo", step="report"))
            raise
        return {}

    run = Run(careful, "t", {})
    first = run.advance(1, 1.0, [])
    cut = Outcome(Status.CANCELLED, reason="CANCELLED", cost=Outcome(Status.OK).cost)
    cleanup = run.advance(2, 2.0, answers(1, cut), cancelling=True)
    assert [c.body["args"]["step"] for c in cleanup.commands] == ["undo", "report"]
    assert cleanup.memo["cancelling"] is True
    end = run.advance(3, 3.0, answers(2, ok({"step": "undo"}), ok({"step": "report"})), cancelling=True)
    assert end.final is not None and end.final.reason == "CANCELLED"
    journal = [
        Recorded(1, 1.0, (), tuple(c.fingerprint for c in first.commands), ()),
        Recorded(2, 2.0, (), tuple(c.fingerprint for c in cleanup.commands), (*answers(1, cut),), True),
    ]
    again, stopped = replay(careful, "t", {}, journal)
    assert stopped is None and again.cancelling and again.issued == 3


def test_a_caught_gather_failure_with_a_later_success_does_not_break_the_run():
    @agent(name="gathers")
    async def gathers(ctx: Context, inp: dict) -> dict:
        try:
            await ctx.gather(ctx.exec("python", code="fail"), ctx.exec("echo", v=1))
        except ActionFailed:
            return {"caught": True}
        return {}

    final, _, _ = drive(gathers, echo_answer)
    assert json.loads(final.result_json) == {"caught": True}


def test_an_agent_that_calls_sys_exit_fails_its_task_not_the_planner():
    import sys

    @agent(name="exits")
    async def exits(ctx: Context, inp: dict) -> dict:
        await ctx.exec("echo")
        sys.exit(3)

    final, _, _ = drive(exits, echo_answer)
    assert final.reason == "AGENT_ERROR" and final.message == "SystemExit: 3"


def test_arguments_that_are_not_json_fail_at_the_call():
    @agent(name="odd")
    async def odd(ctx: Context, inp: dict) -> dict:
        try:
            ctx.exec("echo", when=object())
        except TypeError as exc:
            return {"refused": str(exc)}
        return {}

    final, _, _ = drive(odd, echo_answer)
    assert json.loads(final.result_json)["refused"].startswith("ctx.exec arguments must be JSON")


TOOLS = {
    "python": {"description": "Run Python.", "args_schema": {"required": ["code"]}, "repeat": "SANDBOXED"},
    "echo": {"description": "Echo.", "args_schema": {}, "repeat": "REPEAT_SAFETY_SAFE"},
}


@agent(name="toolish")
async def toolish(ctx: Context, inp: dict) -> dict:
    tools = ctx.tools()
    ran = await ctx.exec("echo", names=sorted(tools))
    return {"names": ran.output["names"], "schema": tools["python"].args_schema}


def test_tools_are_read_once_recorded_and_replayed_from_the_journal():
    final, journal, steps = drive(toolish, echo_answer, tools=TOOLS)
    assert json.loads(final.result_json) == {"names": ["echo", "python"], "schema": {"required": ["code"]}}
    assert steps[0].memo["tools"] == TOOLS and "tools" not in steps[1].memo
    # Cold, each decision replayed with a catalogue that has changed since: the recorded one answers.
    changed = {"python": TOOLS["python"], "shell": TOOLS["echo"]}
    again, cold_journal, _ = drive(toolish, echo_answer, replay_every_step=True, tools=changed)
    assert json.loads(again.result_json)["names"] == ["python", "shell"]  # a fresh run reads it anew
    run, stopped = replay(toolish, "task-1", None, journal, tools=changed)
    assert stopped is None and run.issued == 1  # the journal's run, replayed on its own catalogue


def test_reading_tools_that_were_not_handed_in_asks_again_later():
    with pytest.raises(Unready, match="tools"):
        Run(toolish, "t", None).advance(1, 1.0, [])
    final, _, _ = drive(toolish, echo_answer, tools=TOOLS)  # a later call, with the catalogue
    assert final.ok


def test_a_failure_may_keep_what_the_agent_found_as_the_task_result():
    @agent(name="partial")
    async def partial(ctx: Context, inp: dict) -> dict:
        out = await ctx.exec("echo", tried=3)
        raise AgentError("none passed", reason="TESTS_FAILED", result={"tried": out.output["tried"]})

    final, _, _ = drive(partial, echo_answer)
    assert (final.ok, final.reason, final.message) == (False, "TESTS_FAILED", "none passed")
    assert json.loads(final.result_json) == {"tried": 3} and "traceback" in final.details


def test_a_json_schema_input_fills_defaults_and_names_each_bad_field():
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["n", "name"],
        "properties": {
            "n": {"type": "integer", "minimum": 1},
            "name": {"type": "string"},
            "mode": {"enum": ["a", "b"], "default": "a"},
        },
    }

    @agent(name="schemed", input=schema)
    async def schemed(ctx: Context, inp: dict) -> dict:
        return inp

    declared = schemed.input
    assert declared.violations({"n": 2, "name": "x"}) == []
    assert declared.violations({"n": 2.0, "name": "x"}) == [("n", "2.0 is not of type 'integer'")]
    assert declared.violations({"n": True, "name": "x"})[0][0] == "n"
    assert sorted(f for f, _ in declared.violations({"colour": 1, "size": 2})) == [
        "colour",
        "n",
        "name",
        "size",
    ]
    assert dict(declared.violations({"colour": 1, "n": 1, "name": ""})) == {"colour": "unknown field"}
    final, _, _ = drive(schemed, echo_answer, {"n": 3, "name": "x"})
    assert json.loads(final.result_json) == {"n": 3, "name": "x", "mode": "a"}
