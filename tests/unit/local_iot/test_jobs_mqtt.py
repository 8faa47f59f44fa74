"""Where the Jobs service publishes: answers on the plugin's private topic (or, without the plugin, on the answer
topic itself), notifications always on their own topics."""

from __future__ import annotations

from typing import Any

import pytest

from local_iot.jobs.core import JobsOutgoing
from local_iot.jobs.mqtt import REPLY_PREFIX, JobsService, reply_topic

THING = "dev-1:a_b"
JOBS = f"$aws/things/{THING}/jobs/"


@pytest.mark.parametrize(
    "suffix", ["$next/get/accepted", "get/rejected", "start-next/accepted", "job-1/update/rejected"]
)
def test_an_answer_goes_to_the_private_topic_of_its_thing(suffix: str) -> None:
    assert reply_topic(JOBS + suffix) == f"{REPLY_PREFIX}{THING}/{JOBS}{suffix}"


@pytest.mark.parametrize(
    "topic",
    [
        JOBS + "notify",
        JOBS + "notify-next",
        JOBS + "get",  # a request
        "$aws/things/t/streams/s/data/json/accepted",  # not a Jobs topic
        "$aws/things//jobs/get/accepted",
        "other/things/t/jobs/get/accepted",
    ],
)
def test_anything_else_has_no_private_topic(topic: str) -> None:
    assert reply_topic(topic) is None


class FakeClient:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, **kwargs: Any) -> None:
        self.published.append((topic, payload, qos))


@pytest.mark.parametrize("direct", [True, False])
def test_the_service_routes_answers_by_the_plugin_only_when_it_is_there(direct: bool) -> None:
    service = JobsService(account_id="123456789012", region="us-east-1", direct_replies=direct)
    client = FakeClient()
    service._client = client  # type: ignore[assignment]
    answer = JobsOutgoing(topic=JOBS + "$next/get/accepted", payload=b'{"clientToken":"t"}')
    notification = JobsOutgoing(topic=JOBS + "notify-next", payload=b"{}")
    service._publish([answer, notification])
    first = f"{REPLY_PREFIX}{THING}/{answer.topic}" if direct else answer.topic
    assert client.published == [(first, answer.payload, 1), (notification.topic, notification.payload, 1)]
