"""The download engine's rule tables: which (state, input) pairs are accepted and where they may lead, and how
a rejection code is handled. Data only; ``device_sim.engine.machine`` applies them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from device_sim.engine.types import EngineInput, EngineState
from device_sim.protocol.errors import ErrorCode

__all__ = ["REJECTION_HINTS", "TRANSITIONS", "classify_rejection"]

_S = EngineState
_I = EngineInput

#: (state, input) -> the states the input may lead to. Anything else raises EngineStateError.
#: Late network input (blocks, rejections) and the caller's I/O reports (request sent, link resumed) are
#: accepted and ignored in the terminal states; the caller's own decisions (start, timer, restart, cancel) are
#: errors there.
TRANSITIONS: Mapping[tuple[EngineState, EngineInput], frozenset[EngineState]] = MappingProxyType(
    {
        (_S.IDLE, _I.START): frozenset({_S.RUNNING, _S.COMPLETE}),
        (_S.IDLE, _I.TIMER): frozenset({_S.IDLE, _S.RUNNING, _S.COMPLETE}),
        (_S.IDLE, _I.CANCEL): frozenset({_S.FAILED}),
        (_S.IDLE, _I.REQUEST_SENT): frozenset({_S.IDLE}),
        (_S.IDLE, _I.LINK_RESUMED): frozenset({_S.IDLE}),
        (_S.RUNNING, _I.RECEIVE_BLOCK): frozenset({_S.RUNNING, _S.COMPLETE}),
        (_S.RUNNING, _I.RECEIVE_REJECTION): frozenset({_S.RUNNING, _S.BACKOFF, _S.NEEDS_DESCRIBE, _S.FAILED}),
        (_S.RUNNING, _I.TIMER): frozenset({_S.RUNNING, _S.FAILED}),
        (_S.RUNNING, _I.RESTART): frozenset({_S.RUNNING, _S.COMPLETE}),
        (_S.RUNNING, _I.CANCEL): frozenset({_S.FAILED}),
        (_S.RUNNING, _I.REQUEST_SENT): frozenset({_S.RUNNING}),
        (_S.RUNNING, _I.LINK_RESUMED): frozenset({_S.RUNNING, _S.FAILED}),
        (_S.BACKOFF, _I.RECEIVE_BLOCK): frozenset({_S.BACKOFF, _S.COMPLETE}),
        (_S.BACKOFF, _I.RECEIVE_REJECTION): frozenset({_S.BACKOFF, _S.NEEDS_DESCRIBE, _S.FAILED}),
        (_S.BACKOFF, _I.TIMER): frozenset({_S.BACKOFF, _S.RUNNING}),
        (_S.BACKOFF, _I.RESTART): frozenset({_S.RUNNING, _S.COMPLETE}),
        (_S.BACKOFF, _I.CANCEL): frozenset({_S.FAILED}),
        (_S.BACKOFF, _I.REQUEST_SENT): frozenset({_S.BACKOFF}),
        (_S.BACKOFF, _I.LINK_RESUMED): frozenset({_S.BACKOFF}),
        (_S.NEEDS_DESCRIBE, _I.RECEIVE_BLOCK): frozenset({_S.NEEDS_DESCRIBE}),
        (_S.NEEDS_DESCRIBE, _I.RECEIVE_REJECTION): frozenset({_S.NEEDS_DESCRIBE, _S.FAILED}),
        (_S.NEEDS_DESCRIBE, _I.TIMER): frozenset({_S.NEEDS_DESCRIBE, _S.FAILED}),
        (_S.NEEDS_DESCRIBE, _I.RESTART): frozenset({_S.RUNNING, _S.COMPLETE}),
        (_S.NEEDS_DESCRIBE, _I.CANCEL): frozenset({_S.FAILED}),
        (_S.NEEDS_DESCRIBE, _I.REQUEST_SENT): frozenset({_S.NEEDS_DESCRIBE}),
        (_S.NEEDS_DESCRIBE, _I.LINK_RESUMED): frozenset({_S.NEEDS_DESCRIBE}),
        (_S.COMPLETE, _I.RECEIVE_BLOCK): frozenset({_S.COMPLETE}),
        (_S.COMPLETE, _I.RECEIVE_REJECTION): frozenset({_S.COMPLETE}),
        (_S.COMPLETE, _I.REQUEST_SENT): frozenset({_S.COMPLETE}),
        (_S.COMPLETE, _I.LINK_RESUMED): frozenset({_S.COMPLETE}),
        (_S.FAILED, _I.RECEIVE_BLOCK): frozenset({_S.FAILED}),
        (_S.FAILED, _I.RECEIVE_REJECTION): frozenset({_S.FAILED}),
        (_S.FAILED, _I.REQUEST_SENT): frozenset({_S.FAILED}),
        (_S.FAILED, _I.LINK_RESUMED): frozenset({_S.FAILED}),
    }
)

_THROTTLE_WORDS = ("Throttl", "LimitExceeded", "ServiceUnavailable", "TooManyRequests")

REJECTION_HINTS: Mapping[str, str] = MappingProxyType(
    {
        ErrorCode.RESOURCE_NOT_FOUND: "check the stream id and file id; the stream or its S3 object may be gone",
        ErrorCode.ETAG_MISMATCH: "the S3 object changed after the stream recorded it; update the stream "
        "(pin the object version) and download again",
        ErrorCode.UNAUTHORIZED: "the stream's role cannot read the S3 object; fix the role or its trust policy",
        ErrorCode.INVALID_REQUEST: "the request did not fit the file; re-describe the stream and retry",
    }
)


def classify_rejection(code: str) -> str:
    """``"version"``, ``"throttle"`` (back off and retry) or ``"fatal"`` for a rejection code."""
    known = ErrorCode.parse(code)
    if known is ErrorCode.VERSION_MISMATCH:
        return "version"
    if known is ErrorCode.INTERNAL_ERROR:
        return "throttle"
    if known is None and any(word.lower() in code.lower() for word in _THROTTLE_WORDS):
        return "throttle"
    return "fatal"
