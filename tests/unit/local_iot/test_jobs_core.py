"""JobsCore on a virtual clock: the Jobs MQTT API's answers, notifications, transitions and timers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local_iot.jobs.core import JobsCore, JobsOutgoing, Target
from local_iot.jobs.model import ApiError, ExecutionStatus, JobsApiError, JobStatus

T0 = 1_700_000_000.0
DOC = json.dumps({"afr_ota": {"streamname": "fw", "files": [{"fileid": 0, "filesize": 10}]}})


def target(name: str) -> Target:
    return Target(thing_name=name, thing_arn=f"arn:aws:iot:us-east-1:123456789012:thing/{name}")


def make(*things: str, now: float = T0, job_id: str = "job-1", **kwargs: Any) -> tuple[JobsCore, list[JobsOutgoing]]:
    core = JobsCore(account_id="123456789012", region="us-east-1")
    _, out = core.create_job(
        job_id, targets=[target(t).thing_arn for t in things], resolved=[target(t) for t in things], document=DOC,
        now=now, **kwargs,
    )  # fmt: skip
    return core, out


def by_topic(out: list[JobsOutgoing]) -> dict[str, dict[str, Any]]:
    return {m.topic: json.loads(m.payload) for m in out}


def ask(core: JobsCore, thing: str, suffix: str, body: Any = None, now: float = T0) -> tuple[str, dict[str, Any]]:
    """Publish a request; return (accepted|rejected, answer) and check nothing else answered it."""
    topic = f"$aws/things/{thing}/jobs/{suffix}"
    payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    out = core.handle(topic, payload, now)
    answers = [m for m in out if m.topic.startswith(topic + "/")]
    assert len(answers) == 1, out
    return answers[0].topic.rsplit("/", 1)[1], json.loads(answers[0].payload)


def test_create_job_notifies_each_target_of_its_next_execution() -> None:
    _, out = make("a", "b")
    topics = by_topic(out)
    assert set(topics) == {f"$aws/things/{t}/jobs/{n}" for t in "ab" for n in ("notify", "notify-next")}
    nxt = topics["$aws/things/a/jobs/notify-next"]
    assert nxt["timestamp"] == int(T0)
    assert nxt["execution"]["jobId"] == "job-1" and nxt["execution"]["status"] == "QUEUED"
    assert nxt["execution"]["jobDocument"]["afr_ota"]["streamname"] == "fw"
    assert nxt["execution"]["versionNumber"] == 1 and nxt["execution"]["executionNumber"] == 1
    assert topics["$aws/things/a/jobs/notify"]["jobs"]["QUEUED"][0]["jobId"] == "job-1"


def test_start_next_moves_to_in_progress_and_echoes_the_token() -> None:
    core, _ = make("a")
    kind, answer = ask(core, "a", "start-next", {"clientToken": "tok-1", "statusDetails": {"k": "v"}}, now=T0 + 5)
    assert kind == "accepted" and answer["clientToken"] == "tok-1"
    execution = answer["execution"]
    assert execution["status"] == "IN_PROGRESS" and execution["startedAt"] == int(T0 + 5)
    assert execution["statusDetails"] == {"k": "v"} and execution["versionNumber"] == 2
    assert execution["thingName"] == "a"
    # the next execution is the same one: no notify-next, and a second start-next returns it unchanged
    kind, again = ask(core, "a", "start-next", {})
    assert again["execution"]["versionNumber"] == 2 and "clientToken" not in again


def test_get_lists_pending_and_next_get_describes_it() -> None:
    core, _ = make("a")
    core.create_job("job-2", targets=[], resolved=[target("a")], document=DOC, now=T0 + 1)
    ask(core, "a", "job-2/update", {"status": "IN_PROGRESS"})
    kind, answer = ask(core, "a", "get", {"clientToken": "x"})
    assert kind == "accepted"
    assert [j["jobId"] for j in answer["inProgressJobs"]] == ["job-2"]
    assert [j["jobId"] for j in answer["queuedJobs"]] == ["job-1"]
    _, nxt = ask(core, "a", "$next/get", {"includeJobDocument": False})
    assert nxt["execution"]["jobId"] == "job-2" and "jobDocument" not in nxt["execution"]
    _, none = ask(core, "b", "$next/get", {})
    assert "execution" not in none


def test_update_version_mismatch_carries_the_execution_state() -> None:
    core, _ = make("a")
    kind, answer = ask(core, "a", "job-1/update", {"status": "IN_PROGRESS", "expectedVersion": 7, "clientToken": "c"})
    assert kind == "rejected" and answer["code"] == "VersionMismatch" and answer["clientToken"] == "c"
    assert answer["executionState"] == {"status": "QUEUED", "statusDetails": {}, "versionNumber": 1}
    kind, answer = ask(
        core, "a", "job-1/update", {"status": "IN_PROGRESS", "expectedVersion": 1, "includeJobExecutionState": True}
    )
    assert kind == "accepted" and answer["executionState"]["versionNumber"] == 2


def test_terminal_executions_refuse_updates_and_describes() -> None:
    core, _ = make("a")
    kind, answer = ask(core, "a", "job-1/update", {"status": "SUCCEEDED", "statusDetails": {"reason": "ok"}})
    assert kind == "accepted"
    kind, answer = ask(core, "a", "job-1/update", {"status": "IN_PROGRESS"})
    assert kind == "rejected" and answer["code"] == "InvalidStateTransition"
    assert answer["executionState"]["status"] == "SUCCEEDED"
    kind, answer = ask(core, "a", "job-1/get", {})
    assert kind == "rejected" and answer["code"] == "TerminalStateReached"
    assert core.jobs["job-1"].status is JobStatus.COMPLETED


@pytest.mark.parametrize(
    ("suffix", "payload", "code"),
    [
        ("job-1/update", b"{nope", "InvalidJson"),
        ("job-1/update", b"[1]", "InvalidJson"),
        ("job-1/update", {"status": "DONE"}, "InvalidRequest"),
        ("job-1/update", {"status": "QUEUED"}, "InvalidRequest"),
        ("job-1/update", {"status": "IN_PROGRESS", "statusDetails": {"k": 1}}, "InvalidRequest"),
        ("job-1/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0}, "InvalidRequest"),
        ("job-1/update", {"status": "IN_PROGRESS", "clientToken": ""}, "InvalidRequest"),
        ("nope/update", {"status": "IN_PROGRESS"}, "ResourceNotFound"),
        ("nope/get", {}, "ResourceNotFound"),
        ("job-1/frobnicate", {}, "InvalidTopic"),
        ("start-next/now", {}, "InvalidTopic"),
    ],
)
def test_rejections(suffix: str, payload: Any, code: str) -> None:
    core, _ = make("a")
    kind, answer = ask(core, "a", suffix, payload)
    assert (kind, answer["code"]) == ("rejected", code)
    assert answer["timestamp"] == int(T0) and answer["message"]


def test_own_publications_are_ignored() -> None:
    core, _ = make("a")
    for suffix in ("notify", "notify-next", "get/accepted", "job-1/update/rejected"):
        assert core.handle(f"$aws/things/a/jobs/{suffix}", b"{}", T0) == []


def test_step_timeout_times_the_execution_out_on_the_virtual_clock() -> None:
    core, _ = make("a")
    ask(core, "a", "start-next", {"stepTimeoutInMinutes": 2}, now=T0)
    assert core.next_deadline() == T0 + 120
    assert core.tick(T0 + 119) == []
    out = by_topic(core.tick(T0 + 120))
    assert "execution" not in out["$aws/things/a/jobs/notify-next"]
    assert core.by_thing["a"]["job-1"].status is ExecutionStatus.TIMED_OUT
    _kind, answer = ask(core, "a", "job-1/update", {"status": "SUCCEEDED"})
    assert answer["code"] == "InvalidStateTransition" and answer["executionState"]["status"] == "TIMED_OUT"
    assert core.jobs["job-1"].status is JobStatus.COMPLETED


def test_an_update_with_a_new_step_timeout_resets_the_timer() -> None:
    core, _ = make("a")
    ask(core, "a", "start-next", {"stepTimeoutInMinutes": 1}, now=T0)
    ask(core, "a", "job-1/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 3}, now=T0 + 50)
    assert core.tick(T0 + 61) == [] and core.next_deadline() == T0 + 50 + 180


def test_cancel_job_without_force_leaves_in_progress_executions() -> None:
    core, _ = make("a", "b")
    ask(core, "a", "start-next", {})
    _, out = core.cancel_job("job-1", force=False, now=T0 + 1)
    assert set(by_topic(out)) == {"$aws/things/b/jobs/notify", "$aws/things/b/jobs/notify-next"}
    assert core.by_thing["a"]["job-1"].status is ExecutionStatus.IN_PROGRESS
    assert core.by_thing["b"]["job-1"].status is ExecutionStatus.CANCELED
    _, out = core.cancel_job("job-1", force=True, now=T0 + 2)
    assert "execution" not in by_topic(out)["$aws/things/a/jobs/notify-next"]
    _kind, answer = ask(core, "a", "job-1/update", {"status": "IN_PROGRESS"})
    assert answer["code"] == "InvalidStateTransition" and answer["executionState"]["status"] == "CANCELED"


def test_cancel_execution_needs_force_while_in_progress_and_checks_the_version() -> None:
    core, _ = make("a")
    ask(core, "a", "start-next", {})
    with pytest.raises(JobsApiError) as info:
        core.cancel_execution("job-1", "a", force=False, now=T0)
    assert info.value.error is ApiError.INVALID_STATE_TRANSITION
    with pytest.raises(JobsApiError) as info:
        core.cancel_execution("job-1", "a", force=True, now=T0, expected_version=1)
    assert info.value.error is ApiError.VERSION_CONFLICT
    core.cancel_execution("job-1", "a", force=True, now=T0, expected_version=2)
    assert core.get_execution("job-1", "a").status is ExecutionStatus.CANCELED


def test_deleted_execution_is_resource_not_found_for_the_device() -> None:
    core, _ = make("a")
    ask(core, "a", "start-next", {})
    with pytest.raises(JobsApiError):
        core.delete_execution("job-1", "a", 1, force=False, now=T0)
    out = core.delete_execution("job-1", "a", 1, force=True, now=T0)
    assert "execution" not in by_topic(out)["$aws/things/a/jobs/notify-next"]
    _kind, answer = ask(core, "a", "job-1/update", {"status": "SUCCEEDED"})
    assert answer["code"] == "ResourceNotFound"


def test_delete_job_needs_force_or_a_terminal_job() -> None:
    core, _ = make("a")
    with pytest.raises(JobsApiError) as info:
        core.delete_job("job-1", force=False, now=T0)
    assert info.value.error is ApiError.INVALID_STATE_TRANSITION
    core.cancel_job("job-1", force=False, now=T0)
    core.delete_job("job-1", force=False, now=T0)
    assert core.jobs == {} and core.by_thing == {}


def test_rollout_releases_maximum_per_minute() -> None:
    core, _out = make("a", "b", "c", "d", "e", max_per_minute=2)
    assert sorted(t for t in core.by_thing) == ["a", "b"]
    assert core.jobs["job-1"].waiting and core.next_deadline() == T0 + 60
    assert core.tick(T0 + 59) == []
    core.tick(T0 + 60)
    assert sorted(core.by_thing) == ["a", "b", "c", "d"]
    core.tick(T0 + 120)
    assert sorted(core.by_thing) == ["a", "b", "c", "d", "e"] and core.next_deadline() is None


def test_create_job_validation() -> None:
    core, _ = make("a")
    for kwargs, error in [
        ({"job_id": "job-1"}, ApiError.RESOURCE_ALREADY_EXISTS),
        ({"job_id": "bad id"}, ApiError.INVALID_REQUEST),
        ({"job_id": "j2", "document": "[]"}, ApiError.INVALID_REQUEST),
        ({"job_id": "j3", "max_per_minute": 0}, ApiError.INVALID_REQUEST),
    ]:
        job_id = kwargs.pop("job_id")
        args: dict[str, Any] = {"targets": [], "resolved": [], "document": DOC, "now": T0, **kwargs}
        with pytest.raises(JobsApiError) as info:
            core.create_job(job_id, **args)
        assert info.value.error is error
