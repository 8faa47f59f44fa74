"""A device fleet on Locust: past one process (``--processes N``) and one machine (``--master`` / ``--worker``).

Processes of a run: the Locust master (``master.MasterAgent``: grants devices, collects records, writes the
reports of ``device-sim fleet``); Locust workers (``worker.WorkerAgent``: one Locust user per device, Locust
statistics); and one device host per worker (``host``: a plain asyncio process running ``fleet.run_device``,
or ``fleet.jobs.run_job_device`` for ``--jobs``: the same device code as ``device-sim fleet``). ``messages``
defines what they say to each other, ``ledger`` the master's bookkeeping, ``options`` the fleet's options (those
of ``device-sim fleet``) on every path.
The Locust entry point is ``device_sim/fleet/locust/locustfile.py``; ``device-sim locust-fleet`` wraps it.

Importing this package imports neither Locust nor gevent (the entry point does, and monkey-patches the process).
"""
