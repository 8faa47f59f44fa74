"""AWS's MQTT file streams library (aws-iot-core-mqtt-file-streams-embedded-c 1.1) as its demos drive it.

The library only builds requests and decodes blocks; the application asks for one block, waits for it, asks for the
next. Its CBOR request is ``{"c": "rdy", "f", "l", "o": <the block>, "b": h'4d513d3d' (the ASCII of "MQ=="), "n": 1}``:
the bitmap is a fixed placeholder, the block is named by ``o``. Its JSON request is the text
``{"s": 1,"f": <id>,"l": <size>,"o": <block>,"n": 1}``, whose hard-coded ``s: 1`` is answered ``VersionMismatch``
once the stream has been updated, which the library cannot read: the download then only ends by the application's
give-up rule (``momentum`` here). The wait before asking again is the application's (``request_wait``).
"""

from __future__ import annotations

from device_sim.engine.profiles.base import LibraryMachine, PlannedRequest
from device_sim.protocol.library import MFS_CLIENT_TOKEN, MFS_PLACEHOLDER_BITMAP
from device_sim.protocol.messages import GetStreamRequest, RequestShape

__all__ = ["MfsMachine"]


class MfsMachine(LibraryMachine):
    """One file downloaded block by block with the MQTT file streams library."""

    bad_block_is_fatal = False  # the demos skip a block they cannot use and ask again

    def _request(self) -> PlannedRequest:
        block = self._have.index(0)  # the lowest missing block
        request = GetStreamRequest(
            client_token=None if self.settings.json else MFS_CLIENT_TOKEN,
            file_id=self.file_id,
            block_size=self.settings.block_size,
            offset=block,
            number_of_blocks=1,
            bitmap=None if self.settings.json else MFS_PLACEHOLDER_BITMAP,
            shape=RequestShape.MFS,
        )
        return PlannedRequest(request=request, blocks=(block,), batch=1)

    def _counts(self, index: int, new: bool) -> bool:
        return new  # the application waits for the block it asked for; an old one does not end the wait
