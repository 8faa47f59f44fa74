"""device_sim: simulated devices for AWS IoT MQTT-based file delivery (streams).

The public face. Names load on first use (PEP 562), so ``import device_sim.protocol`` (the emulator and the
provisioner do) does not pull in awscrt or boto3. Layers, lowest first: ``protocol``, ``engine``, ``sinks``,
``transport``, ``results``, ``device``, ``fleet``, ``cli`` (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device_sim.device import Device, DeviceResult, DownloadSettings, S3Source, SinkKind
    from device_sim.engine import DownloadEngine, EngineSettings, EngineStats
    from device_sim.fleet import FleetPlan, FleetRun, FleetSettings, PlanError, run_fleet, run_plan
    from device_sim.protocol import Format
    from device_sim.results import DeviceMetrics, FleetSummary, write_reports
    from device_sim.transport import MqttTransport, Transport, TransportFactory, TransportSettings

_WHERE = {
    "Device": "device_sim.device",
    "DeviceResult": "device_sim.device",
    "DownloadSettings": "device_sim.device",
    "S3Source": "device_sim.device",
    "SinkKind": "device_sim.device",
    "DownloadEngine": "device_sim.engine",
    "EngineSettings": "device_sim.engine",
    "EngineStats": "device_sim.engine",
    "FleetPlan": "device_sim.fleet",
    "FleetRun": "device_sim.fleet",
    "FleetSettings": "device_sim.fleet",
    "PlanError": "device_sim.fleet",
    "run_fleet": "device_sim.fleet",
    "run_plan": "device_sim.fleet",
    "Format": "device_sim.protocol",
    "DeviceMetrics": "device_sim.results",
    "FleetSummary": "device_sim.results",
    "write_reports": "device_sim.results",
    "MqttTransport": "device_sim.transport",
    "Transport": "device_sim.transport",
    "TransportFactory": "device_sim.transport",
    "TransportSettings": "device_sim.transport",
}

__all__ = [
    "Device",
    "DeviceMetrics",
    "DeviceResult",
    "DownloadEngine",
    "DownloadSettings",
    "EngineSettings",
    "EngineStats",
    "FleetPlan",
    "FleetRun",
    "FleetSettings",
    "FleetSummary",
    "Format",
    "MqttTransport",
    "PlanError",
    "S3Source",
    "SinkKind",
    "Transport",
    "TransportFactory",
    "TransportSettings",
    "run_fleet",
    "run_plan",
    "write_reports",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'device_sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
