"""``--local DIR``: defaults taken from the ``local-iot.json`` that ``local-iot up`` writes into its state dir.

Keys read: ``device_endpoint`` (the host devices dial: the first ``--advertise`` name; older files: ``mqtt_host``),
``mqtt_port`` (plain), ``tls_port``, ``ca_cert``, ``ca_key``, ``aws_endpoint_url``, ``region``, ``running``;
optional ``aws_access_key_id``/``aws_secret_access_key`` (else dummy credentials, so a local run never signs with
real ones). Relative paths are relative to DIR. Nothing else in the provisioner knows about local_iot: this only
fills in the same options a user could pass by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

LOCAL_CONFIG_NAME = "local-iot.json"
DUMMY_CREDENTIALS = ("testing", "testing")


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalConfig:
    mqtt_host: str
    mqtt_port: int | None
    tls_port: int
    ca_cert: Path
    ca_key: Path
    aws_endpoint_url: str
    region: str
    credentials: tuple[str, str]


def read_local_config(state_dir: Path) -> LocalConfig:
    path = state_dir / LOCAL_CONFIG_NAME
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path} does not exist", hint="start `local-iot up --state-dir DIR` first") from e
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from e

    if data.get("running") is False:
        raise InputError(f"local_iot is not running on {state_dir}", hint="start `local-iot up --state-dir DIR` first")

    def resolve(value: Any) -> Path:
        p = Path(str(value))
        return p if p.is_absolute() else state_dir / p

    try:
        return LocalConfig(
            mqtt_host=str(data.get("device_endpoint") or data["mqtt_host"]),
            mqtt_port=None if data.get("mqtt_port") is None else int(data["mqtt_port"]),
            tls_port=int(data["tls_port"]),
            ca_cert=resolve(data["ca_cert"]),
            ca_key=resolve(data["ca_key"]),
            aws_endpoint_url=str(data["aws_endpoint_url"]),
            region=str(data.get("region") or "us-east-1"),
            credentials=(
                str(data.get("aws_access_key_id") or DUMMY_CREDENTIALS[0]),
                str(data.get("aws_secret_access_key") or DUMMY_CREDENTIALS[1]),
            ),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path} lacks or has a bad {e}", hint="is it a local-iot.json from `local-iot up`?") from e
