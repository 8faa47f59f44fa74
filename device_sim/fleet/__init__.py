"""Fleets (layer 6): the plan read from a manifest (``plan``), the asyncio runner (``runner``), process resources
(``resources``) and the Locust engine (``locust``, imported only by Locust itself: it monkey-patches the process).
"""

from device_sim.fleet.plan import (
    DeviceIdentity,
    FleetPlan,
    FleetSettings,
    FleetTarget,
    PlanError,
    Shard,
    device_from_manifest,
    read_target,
    s3_source,
    select_identities,
)
from device_sim.fleet.runner import FleetProgress, FleetRun, run_device, run_fleet, run_plan

__all__ = [
    "DeviceIdentity",
    "FleetPlan",
    "FleetProgress",
    "FleetRun",
    "FleetSettings",
    "FleetTarget",
    "PlanError",
    "Shard",
    "device_from_manifest",
    "read_target",
    "run_device",
    "run_fleet",
    "run_plan",
    "s3_source",
    "select_identities",
]
