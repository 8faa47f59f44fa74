"""The Locust entry point of a device fleet: ``locust -f <path of this file> --manifest run.json [fleet options]``.

How this works: one Locust user per device identity of the manifest (``DeviceUser``); the master sets Locust's
user count to the fleet size and its spawn rate to ``--connect-rate`` (``-u``/``-r`` are not needed), so
Locust's ramp is the connect pacing. (Not a load shape: Locust does not handle SIGTERM while a headless shape
runs.) The master (``locust_fleet.master``) hands each user's claim a distinct device and writes the
same reports as ``device-sim fleet``; each worker (``locust_fleet.worker``) runs its devices with the same
``run_device`` coroutine (``run_job_device`` with ``--jobs``) in a plain asyncio child process, the device host
(``locust_fleet.host``), and fires Locust request events ("connect", "first block", "download") so Locust's
statistics and web UI show the run.
A user runs its device once and then parks: a user that returned would be re-spawned by Locust.

The run comes as data: ``--device-sim-plan`` carries the ``FleetPlan`` JSON that ``device-sim fleet --engine
locust`` built from its options (Locust passes the master's options to its workers), and a worker on another
machine names its own copy of the manifest with ``--device-sim-manifest``. Locust's own options choose the
topology (``--processes N``, ``--master``, ``--worker --master-host H``). ``device-sim fleet --engine locust``
is the way in; it runs ``locust -f`` on this file. Importing it monkey-patches the process with
gevent (Locust does): only Locust imports it.
"""

from __future__ import annotations

import logging
import sys
import weakref
from typing import Any

from gevent.event import Event
from locust import User, constant, events, task
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from device_sim.fleet.locust.master import MasterAgent
from device_sim.fleet.locust.worker import WorkerAgent
from device_sim.fleet.plan import FleetPlan, PlanError

log = logging.getLogger("device_sim.locust")

#: The agents of this process's Locust environment (set once at ``init``, read by the users).
_MASTERS: weakref.WeakKeyDictionary[Any, MasterAgent] = weakref.WeakKeyDictionary()
_WORKERS: weakref.WeakKeyDictionary[Any, WorkerAgent] = weakref.WeakKeyDictionary()

EXIT_BAD_ARGUMENTS = 2


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_: Any) -> None:
    group = parser.add_argument_group("device-sim", "Set by `device-sim fleet --engine locust`.")
    group.add_argument("--device-sim-plan", default=None, help="The fleet plan (JSON).")
    group.add_argument("--device-sim-manifest", default=None, help="This machine's copy of the manifest.")


@events.init.add_listener
def _on_init(environment: Any, runner: Any, **_: Any) -> None:
    options = environment.parsed_options
    if isinstance(runner, MasterRunner | LocalRunner):
        if not options.device_sim_plan:
            log.error("device-sim: no fleet plan: run `device-sim fleet --engine locust --manifest M ...`")
            sys.exit(EXIT_BAD_ARGUMENTS)
        try:
            plan = FleetPlan.from_json(options.device_sim_plan)
        except PlanError as exc:
            log.error("device-sim: %s", exc)
            sys.exit(EXIT_BAD_ARGUMENTS)
        _MASTERS[environment] = MasterAgent(environment, plan)
        _one_user_per_device(options, len(plan.identities), plan.fleet.connect_rate)
    if isinstance(runner, WorkerRunner | LocalRunner):
        # The worker's own --manifest (this machine's copy) before the master's options replace it.
        local = getattr(options, "device_sim_manifest", None) if isinstance(runner, WorkerRunner) else None
        agent = WorkerAgent(environment, local_manifest=local)
        _WORKERS[environment] = agent
        agent.start()
    # Registered after the runner's own listeners, so it runs before them (Locust fires ``quitting`` in reverse):
    # a worker sends its last records before Locust tells the master it quits; the master stops the devices and
    # collects their records before Locust tells the workers to quit.
    environment.events.quitting.add_listener(_on_quitting)


def _one_user_per_device(options: Any, devices: int, connect_rate: float) -> None:
    """Locust's user count and spawn rate (headless start and the web UI's form) for this fleet."""
    if options.num_users not in (None, devices):
        log.warning("one Locust user per device: -u %s replaced by the fleet's %d devices", options.num_users, devices)
    if options.spawn_rate not in (None, connect_rate):
        log.warning("the spawn rate is the connect rate: -r %s replaced by %g/s", options.spawn_rate, connect_rate)
    options.num_users = devices
    options.spawn_rate = connect_rate


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    master = _MASTERS.get(environment)
    if master is not None:
        master.test_started()
    worker = _WORKERS.get(environment)
    if worker is not None:
        worker.configure(environment.parsed_options.device_sim_plan)


def _on_quitting(environment: Any, **_: Any) -> None:
    worker = _WORKERS.get(environment)
    if worker is not None:
        worker.close()
        if isinstance(environment.runner, WorkerRunner) and worker.host_failure is not None:
            environment.process_exit_code = 1
    master = _MASTERS.get(environment)
    if master is not None:
        master.interrupted()


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    for master in list(_MASTERS.values()):  # this process's (one)
        master.wait_for_local_workers()


class DeviceUser(User):
    """One device: claims an identity, downloads and verifies once, then parks until the run ends."""

    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._ran = False

    @task
    def download_once(self) -> None:
        if not self._ran:
            self._ran = True
            _WORKERS[self.environment].run_one()
        Event().wait()  # park: Locust kills the greenlet when the run ends
