"""One device (layer 5): connect, describe, download each file with the engine, verify, report.

``Device`` composes the transport (from a factory), the engine, the sinks and the S3 verification; ``download``
holds one file's download, ``types`` the settings and results, ``meters`` what a device counts.
"""

from device_sim.device.device import NO_SUCH_FILE, Device, DeviceCancelled
from device_sim.device.types import DeviceFailure, DeviceResult, DownloadSettings, FileResult, SinkKind
from device_sim.device.verify import S3Source, SourceError, Verdict

__all__ = [
    "NO_SUCH_FILE",
    "Device",
    "DeviceCancelled",
    "DeviceFailure",
    "DeviceResult",
    "DownloadSettings",
    "FileResult",
    "S3Source",
    "SinkKind",
    "SourceError",
    "Verdict",
]
