"""The Locust master's side of a fleet run (gevent): grants devices, collects records, ends the run, writes reports.

How this works: the master keeps a ``FleetLedger`` of the manifest's devices. Workers' claims are answered with
grants from it; their record batches go into it. A monitor greenlet (never a message handler: stopping Locust
from inside one deadlocks the master) checks four times a second whether a worker that holds devices has gone
missing from Locust's worker list (its devices are then recorded as lost, naming the worker), whether devices
stay unclaimed after Locust's ramp (users Locust gave a worker that went away: it asks Locust to re-dispatch),
whether the deadline has passed (devices are told to stop and get ``STOP_GRACE_S`` to report), whether no
worker is left, and whether every device has reported. Then it writes the same reports as ``device-sim fleet``
(``aggregate`` and ``write_reports`` over the records in manifest order; a jobs plan adds jobs.csv/jobs.json as
``fleet --jobs`` does), sets Locust's exit code (0 only if every device verified; 1 if any failed, never reported
or was lost, or a worker failed; 6 if the reports could not be written) and ends the run (headless: quit; web UI:
stop, the UI stays up). Ctrl-C or SIGTERM still write the reports, from Locust's ``quitting`` event. Every
``PROGRESS_LOG_S`` it logs one line of live counts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import gevent

from device_sim.fleet.jobs import job_record, with_job
from device_sim.fleet.locust.ledger import LOST, FleetLedger, WorkerInfo
from device_sim.fleet.locust.messages import (
    CLAIM,
    GRANT,
    RECORDS,
    STOP,
    WORKER_FAILED,
    Claim,
    Grant,
    Progress,
    Records,
    Stop,
    WireError,
)
from device_sim.fleet.locust.worker import DeviceFailed
from device_sim.fleet.plan import FleetPlan
from device_sim.fleet.runner import settings_dict
from device_sim.results.files import ReportWriteError, write_reports
from device_sim.results.jobs import write_jobs_reports
from device_sim.results.metrics import FleetSummary, aggregate

__all__ = ["EXIT_REPORTS_FAILED", "MasterAgent"]

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.25
STOP_GRACE_S = 15.0
PROGRESS_LOG_S = 5.0
EXIT_REPORTS_FAILED = 6
WORKER_EXIT_TIMEOUT_S = 60.0
STRANDED_AFTER_S = 3.0


class MasterAgent:
    def __init__(self, environment: Any, plan: FleetPlan) -> None:
        self._env = environment
        self._runner = environment.runner
        self._plan = plan
        self.ledger = FleetLedger(
            [identity.thing_name for identity in plan.identities],
            label=plan.label,
            connect_rate=plan.fleet.connect_rate,
            start_jitter=plan.fleet.start_jitter,
            seed=plan.fleet.seed,
        )
        self._t0: float | None = None
        self._epoch = 0.0
        self._done_at: float | None = None
        self._stop_sent_at: float | None = None
        self._why_unstarted = "the run stopped before this device started"
        self._progress: dict[str, Progress] = {}
        self._last_claim_at = 0.0
        self._quitting = False  # Locust is shutting down: it ends the run itself
        self._last_redispatch_at = 0.0
        self._last_progress_log = 0.0
        self.summary: FleetSummary | None = None
        self._runner.register_message(CLAIM, self._on_claim)
        self._runner.register_message(RECORDS, self._on_records)
        self._runner.register_message(WORKER_FAILED, self._on_worker_failed)
        self.worker_failures: list[str] = []

    @property
    def devices(self) -> int:
        return self.ledger.devices

    @property
    def connect_rate(self) -> float:
        return self._plan.fleet.connect_rate

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def test_started(self) -> None:
        if self._t0 is not None:
            log.warning("the fleet runs once per Locust process: restart Locust for another run")
            return
        self._t0 = time.monotonic()
        self._epoch = time.time()
        log.info("fleet of %d devices, connect rate %.0f/s", self.devices, self.connect_rate)
        gevent.spawn(self._monitor)

    # --------------------------------------------------------------------------------------- message handlers

    def _on_claim(self, environment: Any, msg: Any, **_: Any) -> None:
        try:
            claim = Claim.from_wire(msg.data)
        except WireError as exc:
            log.error("bad claim from %s: %s", msg.node_id, exc)
            return
        worker = WorkerInfo(node_id=msg.node_id, pid=claim.pid, hostname=claim.hostname, host_pid=claim.host_pid)
        first = worker.node_id not in {w.node_id for w in self.ledger.workers}
        granted = self.ledger.grant(worker, claim.count)
        if first:
            log.info(
                "%s (device host pid %d, Locust id %s) joined: %d devices granted",
                worker.describe(),
                worker.host_pid,
                worker.node_id,
                len(granted),
            )
        self._last_claim_at = self.elapsed()
        grant = Grant(devices=tuple(granted), asked=claim.count, epoch=self._epoch)
        self._runner.send_message(GRANT, grant.to_wire(), client_id=msg.node_id)

    def _on_records(self, environment: Any, msg: Any, **_: Any) -> None:
        try:
            batch = Records.from_wire(msg.data)
        except WireError as exc:
            log.error("bad records from %s: %s", msg.node_id, exc)
            return
        for index, data in batch.records:
            self.ledger.accept(msg.node_id, index, data)
        if batch.progress is not None:
            self._progress[msg.node_id] = batch.progress
        if self._done_at is None and self.ledger.done:
            self._done_at = self.elapsed()

    def _on_worker_failed(self, environment: Any, msg: Any, **_: Any) -> None:
        try:
            reason = Stop.from_wire(msg.data).reason
        except WireError:
            reason = "(unreadable reason)"
        log.error("worker %s failed and quits: %s", msg.node_id, reason)
        self.worker_failures.append(f"{msg.node_id}: {reason}")

    # ------------------------------------------------------------------------------------------------ monitor

    def _monitor(self) -> None:
        while not self.finished:
            gevent.sleep(CHECK_INTERVAL_S)  # a polling period, not synchronisation
            if self._check():
                self.finish()
                if not self._quitting:
                    gevent.spawn(self._end_run)
                return

    def _check(self) -> bool:
        """True when the run is over."""
        now = self.elapsed()
        self._find_lost_workers(now)
        self._redispatch_if_stranded(now)
        deadline = self._plan.fleet.deadline_s
        if deadline is not None and now >= deadline and self._stop_sent_at is None:
            self._stop(f"the deadline of {deadline:g} s passed", now)
            self._why_unstarted = "the deadline passed before this device started"
        if self._no_workers_left():
            self.ledger.close()
            self._why_unstarted = "no Locust worker was left to run this device"
        if now - self._last_progress_log >= PROGRESS_LOG_S:
            self._last_progress_log = now
            self._log_progress()
        if self.ledger.done:
            return True
        return self._stop_sent_at is not None and now - self._stop_sent_at > STOP_GRACE_S

    def _find_lost_workers(self, now: float) -> None:
        clients = getattr(self._runner, "clients", None)
        if clients is None:  # a LocalRunner: no workers to lose
            return
        from locust.runners import STATE_MISSING

        alive = {node_id for node_id in clients if clients[node_id].state != STATE_MISSING}
        for worker in self.ledger.workers:
            if worker.node_id in alive:
                continue
            lost = self.ledger.worker_lost(worker.node_id, now)
            if lost:
                log.error(
                    "%s was lost at +%.1f s: %d devices never reported: %s",
                    worker.describe(),
                    now,
                    len(lost),
                    ", ".join(lost),
                )
                for _device in lost:
                    self._env.events.request.fire(
                        request_type="MQTT",
                        name="download",
                        response_time=0,
                        response_length=0,
                        exception=DeviceFailed(LOST),
                        context={},
                    )

    def _redispatch_if_stranded(self, now: float) -> None:
        """Devices nobody claims after Locust's ramp ended wait for users Locust gave a worker that went away
        (missing, or quit, possibly before it claimed anything). Asking Locust for the same user count again
        re-dispatches the users of the workers it removed to the others (for the rest it changes nothing)."""
        runner = self._runner
        if not self.ledger.open or self.ledger.granted == self.ledger.devices:
            return
        if getattr(runner, "worker_count", 0) == 0 or runner.state != "running":
            return
        if now - max(self._last_claim_at, self._last_redispatch_at) < STRANDED_AFTER_S:
            return
        log.warning(
            "%d devices unclaimed %.0f s after Locust's ramp: re-dispatching users to the workers left",
            self.ledger.devices - self.ledger.granted,
            now - self._last_claim_at,
        )
        self._last_redispatch_at = now
        gevent.spawn(runner.start, runner.target_user_count, runner.spawn_rate)

    def _no_workers_left(self) -> bool:
        count = getattr(self._runner, "worker_count", None)
        return count == 0 and self.ledger.granted > 0 and self.ledger.open

    def _stop(self, reason: str, now: float) -> None:
        log.warning("stopping the fleet: %s", reason)
        self.ledger.close()
        self._stop_sent_at = now
        self._runner.send_message(STOP, Stop(reason=reason).to_wire())

    def _log_progress(self) -> None:
        total = sum(self._progress.values(), Progress())
        ledger = self.ledger
        rate = total.bytes / 1e6 / self.elapsed() if self.elapsed() > 0 else 0.0
        log.info(
            "devices %d: granted %d, connecting %d, downloading %d, verified %d, failed %d, reported %d, %.2f MB/s",
            ledger.devices,
            ledger.granted,
            total.connecting,
            total.downloading,
            total.verified,
            total.failed,
            ledger.reported,
            rate,
        )

    # ------------------------------------------------------------------------------------------------- finish

    def interrupted(self) -> None:
        """Locust is quitting (Ctrl-C, SIGTERM) before the run ended: stop the devices, give them
        ``STOP_GRACE_S`` to report what they did, and report."""
        if self.finished:
            return
        self._quitting = True
        workers: Any = getattr(self._runner, "worker_count", 0)
        if self.ledger.outstanding() and workers:
            if self._stop_sent_at is None:
                self._stop("the run was interrupted", self.elapsed())
            deadline = time.monotonic() + STOP_GRACE_S
            while not self.ledger.done and time.monotonic() < deadline:
                gevent.sleep(0.1)  # records still arrive: Locust quits its greenlets after this event
        self.ledger.close()
        self._why_unstarted = "the run was interrupted before this device started"
        self.finish()

    def finish(self) -> None:
        """Write the reports and set the exit code (once)."""
        if self.finished:
            return
        self.ledger.close()
        wall_s = self._done_at if self._done_at is not None else self.elapsed()
        records = self.ledger.final_records(wall_s, why_unstarted=self._why_unstarted)
        jobs = self._plan.jobs is not None
        if jobs:  # a device that never reported its job counts as CANCELLED, as in ``run_jobs_fleet``
            records = [with_job(r) for r in records]
        summary = aggregate(
            records,
            wall_s=wall_s,
            settings={
                **settings_dict(self._plan.download, self._plan.fleet, len(self._plan.identities)),
                **({"jobs": True} if jobs else {}),
                "engine": "locust",
                "workers": len(self.ledger.workers),
            },
            price_per_million=self._plan.fleet.price_per_million,
        )
        self.summary = summary
        code = 0 if summary.all_verified and not self.worker_failures else 1
        try:
            paths = [*write_reports(self._plan.report_dir, summary, records).values()]
            if jobs:
                paths += write_jobs_reports(self._plan.report_dir, [job_record(r).to_dict() for r in records])
        except (ReportWriteError, OSError) as exc:
            log.error("%s", exc)
            code = EXIT_REPORTS_FAILED
        else:
            log.info("reports: %s", ", ".join(str(p) for p in paths))
        for failure in self.worker_failures:
            log.error("a worker failed: %s", failure)
        lost = self.ledger.lost_devices()
        if lost:
            workers = ", ".join(w.describe() for w in self.ledger.lost_workers())
            log.error("lost workers: %s; their devices that never reported: %s", workers, ", ".join(lost))
        log.info(
            "fleet done in %.2f s: %d of %d devices verified, %d failed",
            wall_s,
            summary.verified,
            summary.devices,
            summary.failed,
        )
        self._env.process_exit_code = code

    def wait_for_local_workers(self, timeout: float = WORKER_EXIT_TIMEOUT_S) -> None:
        """Wait until this machine's worker processes (``--processes``) have exited, without reaping them.

        Locust's master reaps its forked workers at exit but stops waiting for them after 3 s, so slower ones (and
        their device hosts) would outlive the command. Waiting here, after they were told to quit, closes that gap.
        """
        here = socket.gethostname()
        deadline = time.monotonic() + timeout
        for worker in self.ledger.workers:
            if worker.hostname != here:
                continue
            while time.monotonic() < deadline:
                try:
                    if os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                        break
                except ChildProcessError:
                    break  # not a child of this process (started by hand)
                gevent.sleep(0.05)  # polling a child's exit: gevent has no wait without reaping

    def _end_run(self) -> None:
        options = getattr(self._env, "parsed_options", None)
        if options is None or getattr(options, "headless", True):
            self._runner.quit()
        else:
            self._runner.stop()  # the web UI stays up with the final statistics
