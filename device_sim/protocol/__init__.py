"""The AWS IoT MQTT-based file delivery wire protocol, for both roles. Sans-IO: no network, no clock.

``local_iot`` imports it too, so the client and the emulator share one definition of the wire format.
"""

from device_sim.protocol.bitmap import bitmap_from_hex, bitmap_to_hex, decode_bitmap, encode_bitmap, highest_bit
from device_sim.protocol.codec import (
    DataLayout,
    decode_answer,
    decode_data_block,
    decode_request,
    encode_answer,
    encode_data_block,
    encode_request,
)
from device_sim.protocol.errors import (
    OUT_OF_RANGE_MESSAGE,
    ErrorCode,
    InvalidTopicError,
    LocalProtocolError,
    RemoteProtocolError,
    RequestRejected,
    StreamProtocolError,
)
from device_sim.protocol.limits import block_count, block_length, max_blocks_per_request, metered_messages
from device_sim.protocol.messages import (
    Answer,
    DataBlock,
    DescribeStreamRequest,
    FileInfo,
    GetStreamRequest,
    Rejection,
    Request,
    RequestShape,
    StreamDescription,
)
from device_sim.protocol.topics import (
    Format,
    Operation,
    StreamTopic,
    build_topic,
    parse_topic,
    subscription_filters,
    valid_stream_id,
    valid_thing_name,
)

__all__ = [
    "OUT_OF_RANGE_MESSAGE",
    "Answer",
    "DataBlock",
    "DataLayout",
    "DescribeStreamRequest",
    "ErrorCode",
    "FileInfo",
    "Format",
    "GetStreamRequest",
    "InvalidTopicError",
    "LocalProtocolError",
    "Operation",
    "Rejection",
    "RemoteProtocolError",
    "Request",
    "RequestRejected",
    "RequestShape",
    "StreamDescription",
    "StreamProtocolError",
    "StreamTopic",
    "bitmap_from_hex",
    "bitmap_to_hex",
    "block_count",
    "block_length",
    "build_topic",
    "decode_answer",
    "decode_bitmap",
    "decode_data_block",
    "decode_request",
    "encode_answer",
    "encode_bitmap",
    "encode_data_block",
    "encode_request",
    "highest_bit",
    "max_blocks_per_request",
    "metered_messages",
    "parse_topic",
    "subscription_filters",
    "valid_stream_id",
    "valid_thing_name",
]
