"""The open-files limit, the trust-store variables, the memory meter and the loop hop's tick of a fleet process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device_sim.fleet.plan import DeviceIdentity, FleetTarget
from device_sim.fleet.resources import (
    FDS_RESERVED,
    MemoryMeter,
    MemoryUse,
    drop_system_trust_env,
    system_trust_env_dropped,
)
from device_sim.fleet.runner import (
    FLEET_CONNECT_TIMEOUT_S,
    FLEET_HOP_TICK_DEVICES,
    FLEET_HOP_TICK_S,
    FleetSettings,
    fleet_crt_threads,
    run_until_stopped,
    transport_for,
)
from device_sim.transport import LoopHop, TransportSettings

resource = pytest.importorskip("resource")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Limits are per process and cannot be raised back once lowered: each case runs in its own interpreter."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_soft_limit_is_raised_to_what_the_devices_need() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2000 + FDS_RESERVED:
        pytest.skip(f"the hard limit here ({hard}) is below what the test needs")
    done = run_python(
        """
        import resource
        from device_sim.fleet.resources import ensure_open_files
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        print(ensure_open_files(2000), resource.getrlimit(resource.RLIMIT_NOFILE)[0], ensure_open_files(10))
        """
    )
    assert done.returncode == 0, done.stderr
    returned, in_force, small = (int(x) for x in done.stdout.split())
    assert returned == in_force >= 2000 + FDS_RESERVED
    assert small == in_force  # enough already: left as it is


def test_a_hard_limit_too_low_says_what_to_do() -> None:
    done = run_python(
        """
        import resource
        from device_sim.fleet.resources import OpenFilesLimit, ensure_open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
        try:
            ensure_open_files(1000)
        except OpenFilesLimit as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "1000 devices need about 1256 open files" in done.stdout
    assert "at most 300" in done.stdout and "ulimit" in done.stdout and "--shard" in done.stdout


def test_trust_store_variables_are_dropped_and_named() -> None:
    env = {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_DIR": "/etc/ssl/certs", "HOME": "/root"}
    assert drop_system_trust_env(env) == ["SSL_CERT_FILE", "SSL_CERT_DIR"]
    assert env == {"HOME": "/root"}
    assert drop_system_trust_env(env) == []


def test_trust_store_variables_come_back_after_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/bundle.pem")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with system_trust_env_dropped() as removed:
        assert removed == ["SSL_CERT_FILE"] and "SSL_CERT_FILE" not in os.environ
    assert os.environ["SSL_CERT_FILE"] == "/bundle.pem" and "SSL_CERT_DIR" not in os.environ
    with system_trust_env_dropped(active=False) as removed:
        assert removed == [] and os.environ["SSL_CERT_FILE"] == "/bundle.pem"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_meter_sees_a_transient_peak() -> None:
    meter = MemoryMeter()
    meter.start()
    block = bytearray(os.urandom(1024)) * (48 * 1024)  # 48 MiB, touched, then freed
    del block
    use = meter.stop(devices=4)
    assert use is not None
    assert use.growth_kib >= 40 * 1024
    assert use.per_device_kib == pytest.approx(use.growth_kib / 4)
    assert use.to_dict()["rss_growth_kib"] == use.growth_kib


def test_memory_use_never_reports_negative_growth() -> None:
    use = MemoryUse(start_kib=100, peak_kib=90, devices=2)
    assert use.growth_kib == 0 and use.per_device_kib == 0.0
    assert MemoryUse(start_kib=1, peak_kib=2, devices=0).per_device_kib == 0.0


def test_fleet_uses_half_the_cores_for_awscrt_between_one_and_four() -> None:
    assert [fleet_crt_threads(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4, 4]
    with pytest.raises(ValueError, match="crt threads 0"):
        FleetSettings(crt_threads=0)


# ------------------------------------------------------------------------------------------------------ fleet_gc


def test_fleet_gc_freezes_raises_the_young_threshold_and_puts_everything_back() -> None:
    import gc

    from device_sim.fleet.resources import FLEET_GC_THRESHOLD0, fleet_gc

    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    with fleet_gc():
        assert gc.get_threshold()[0] == max(FLEET_GC_THRESHOLD0, before[0])
        assert gc.get_freeze_count() > frozen_before  # what existed before is out of the collector's way
        with fleet_gc():  # a second fleet in the same process shares the settings
            pass
        assert gc.get_threshold()[0] == max(FLEET_GC_THRESHOLD0, before[0])
    assert gc.get_threshold() == before
    assert frozen_before == 0 and gc.get_freeze_count() == 0  # unfrozen again (nothing else here freezes)


def test_fleet_gc_freezes_what_connecting_devices_built_until_the_connect_phase_ends() -> None:
    import asyncio
    import gc

    from device_sim.fleet.resources import fleet_gc

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        every = 0.01
        with fleet_gc(freeze_until=loop.time() + 2 * every, every_s=every):
            at_start = gc.get_freeze_count()
            built = [[i] for i in range(1000)]  # long-lived containers made while "connecting"
            later = loop.create_future()
            # timers fire in deadline order: this one comes after the first re-freeze (every) has run
            loop.call_later(every * 1.5, later.set_result, None)
            await later
            after_freeze = gc.get_freeze_count()
            stopped = loop.create_future()
            loop.call_later(every * 6, stopped.set_result, None)  # past freeze_until: the freezing stopped
            await stopped
            more = [[i] for i in range(1000)]  # made after the connect phase: left to the collector
            at_end = gc.get_freeze_count()
            del built, more
        return at_start, after_freeze, at_end

    at_start, after_freeze, at_end = asyncio.run(main())
    assert after_freeze >= at_start + 1000
    assert at_end < after_freeze + 1000


@pytest.mark.parametrize("devices", [FLEET_HOP_TICK_DEVICES - 1, FLEET_HOP_TICK_DEVICES])
def test_a_big_fleet_drains_the_hop_on_a_tick_while_it_runs_and_restores_it_after(devices: int) -> None:
    async def main() -> None:
        hop = LoopHop.for_loop(asyncio.get_running_loop())
        seen: list[float | None] = []

        async def device() -> None:
            seen.append(hop.tick_s)

        tasks = [asyncio.ensure_future(device()) for _ in range(devices)]
        outcomes, interrupted = await run_until_stopped(tasks, stop=None, deadline_s=10)
        assert outcomes == [None] * devices and not interrupted
        expected = FLEET_HOP_TICK_S if devices >= FLEET_HOP_TICK_DEVICES else None
        assert set(seen) == {expected}
        assert hop.tick_s is None

    asyncio.run(main())


def test_a_fleets_devices_wait_longer_for_their_connect_unless_told() -> None:
    target = FleetTarget(endpoint="127.0.0.1", port=8883, stream_id="s", no_tls=True)
    identity = DeviceIdentity(thing_name="t1")
    assert transport_for(identity, target, None).connect_timeout_s == FLEET_CONNECT_TIMEOUT_S == 30.0
    assert transport_for(identity, target, {"connect_timeout_s": 4.0}).connect_timeout_s == 4.0
    assert TransportSettings(endpoint="127.0.0.1", client_id="t1", no_tls=True).connect_timeout_s == 10.0  # its own
