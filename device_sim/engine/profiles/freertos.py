"""AWS's stock OTA agent (FreeRTOS OTA library 3.x, ota.c and ota_mqtt.c) as a profile (docs/profiles.md).

Every request is ``{"c": "rdy", "f": <file id>, "l": <block size>, "o": 0, "b": <bitmap of every missing block of the
file, from block 0>, "n": <otaconfigMAX_NUM_BLOCKS_REQUEST>}`` in CBOR, keys in that order, no ``s``. The service
answers the lowest ``n`` missing blocks. The agent counts ``n`` blocks down (duplicates too) and sends the next
request when the count is spent; otherwise its 10 s request timer re-requests. Momentum, duplicates, block checks
and block processing: ``LibraryMachine``.
"""

from __future__ import annotations

from device_sim.engine.profiles.base import LibraryMachine, PlannedRequest
from device_sim.protocol.library import FREERTOS_CLIENT_TOKEN
from device_sim.protocol.messages import GetStreamRequest, RequestShape

__all__ = ["FreeRtosOtaMachine"]


class FreeRtosOtaMachine(LibraryMachine):
    """The OTA agent's download of one file."""

    bad_block_is_fatal = True  # IngestResultBlockOutOfRange: the agent rejects the image and fails the job

    def _request(self) -> PlannedRequest:
        n = self.settings.blocks_per_request
        bitmap = bytearray(-(-self.total_blocks // 8))  # bit i = block i missing, bits past the end clear
        wanted: list[int] = []
        for i, have in enumerate(self._have):
            if not have:
                bitmap[i >> 3] |= 1 << (i & 7)
                if len(wanted) < n:
                    wanted.append(i)
        request = GetStreamRequest(
            client_token=FREERTOS_CLIENT_TOKEN,
            file_id=self.file_id,
            block_size=self.settings.block_size,
            offset=0,
            number_of_blocks=n,
            bitmap=bytes(bitmap),
            shape=RequestShape.FREERTOS_OTA,
        )
        return PlannedRequest(request=request, blocks=tuple(wanted), batch=n)
