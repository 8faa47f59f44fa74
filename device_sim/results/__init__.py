"""What runs produce (layer below the device): per-device metrics and their aggregate (``metrics``), sweep points
(``sweep``), the report files (``files``: summary.json, devices.csv/jsonl, junit.xml, report.html), and their text
tables, HTML and SVG charts. No I/O but the report files; no rich (the CLI renders tables).
"""

from device_sim.results.files import ReportWriteError, read_devices_jsonl, write_reports
from device_sim.results.metrics import DeviceMetrics, FailureKind, FleetSummary, aggregate
from device_sim.results.sweep import SweepPoint

__all__ = [
    "DeviceMetrics",
    "FailureKind",
    "FleetSummary",
    "ReportWriteError",
    "SweepPoint",
    "aggregate",
    "read_devices_jsonl",
    "write_reports",
]
