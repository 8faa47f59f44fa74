"""The sans-IO download engine (layer 2): one file of one stream as a state machine with time passed in.

``DownloadEngine`` (``machine``) with its settings, inputs, actions and counters (``types``), the transition table
(``rules``), the block ledger (``blocks``) and the round-trip estimator (``rtt``). See docs/engine.md. The device
profiles (``profiles``: real libraries' request strategies with the same interface) are in docs/profiles.md.
"""

from device_sim.engine.machine import (
    TRANSITIONS,
    Action,
    Complete,
    DiscardBlocks,
    DownloadEngine,
    EngineInput,
    EngineSettings,
    EngineState,
    EngineStateError,
    EngineStats,
    EngineUsageError,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
    SharedRtt,
    WriteBlock,
    classify_rejection,
)
from device_sim.engine.profiles import (
    DownloadMachine,
    ProfileKind,
    ProfileRefused,
    ProfileSettings,
    make_profile_machine,
)

__all__ = [
    "TRANSITIONS",
    "Action",
    "Complete",
    "DiscardBlocks",
    "DownloadEngine",
    "DownloadMachine",
    "EngineInput",
    "EngineSettings",
    "EngineState",
    "EngineStateError",
    "EngineStats",
    "EngineUsageError",
    "Failed",
    "FailureReason",
    "ProfileKind",
    "ProfileRefused",
    "ProfileSettings",
    "Redescribe",
    "SendRequest",
    "SharedRtt",
    "WriteBlock",
    "classify_rejection",
    "make_profile_machine",
]
