"""Limits of AWS IoT MQTT-based file delivery (docs/protocol.md sections 2-5). One source of truth."""

from __future__ import annotations

from typing import Final

MIN_BLOCK_SIZE: Final = 256
MAX_BLOCK_SIZE: Final = 131072
#: At most this many bytes of block data answer one GetStream request.
MAX_DATA_PER_REQUEST: Final = 131072
MAX_OFFSET: Final = 98304
MIN_BLOCK_COUNT: Final = 1
MAX_BLOCK_COUNT: Final = 98304
#: A bitmap must be strictly shorter than this many bytes.
MAX_BITMAP_BYTES: Final = 12288
MAX_CLIENT_TOKEN_BYTES: Final = 64
MIN_FILE_ID: Final = 0
MAX_FILE_ID: Final = 255
MAX_FILES_PER_STREAM: Final = 50
MAX_STREAM_VERSION: Final = 65535
MAX_TOPIC_BYTES: Final = 256
MAX_TOPIC_SLASHES: Final = 7
#: AWS IoT Core's payload limit for a device publish.
MAX_DEVICE_PAYLOAD: Final = 131072
#: Documented basis for the largest file (MAX_BLOCK_COUNT blocks of MIN_BLOCK_SIZE bytes).
DOCUMENTED_MAX_FILE_SIZE: Final = MAX_BLOCK_COUNT * MIN_BLOCK_SIZE

# Per-connection and per-account quotas (section 5).
CONNECTION_PUBLISHES_PER_SECOND: Final = 100
CONNECTION_BYTES_PER_SECOND: Final = 512 * 1024
ACCOUNT_CONNECTS_PER_SECOND: Final = 500
CLIENT_ID_CONNECTS_PER_SECOND: Final = 1
ACCOUNT_OUTBOUND_PUBLISHES_PER_SECOND: Final = 20000
MAX_INFLIGHT_QOS1: Final = 100
MAX_SUBSCRIPTIONS_PER_CONNECTION: Final = 50
CONTROL_PLANE_TPS: Final = 15

# Metering (section 5): messages are billed in 5 KB steps of payload plus topic.
METERING_STEP_BYTES: Final = 5 * 1024
DEFAULT_PRICE_PER_MILLION_MESSAGES_USD: Final = 1.00


def max_blocks_per_request(block_size: int) -> int:
    """How many blocks of ``block_size`` fit in one answer (``floor(131072 / l)``)."""
    return MAX_DATA_PER_REQUEST // block_size


def block_count(file_size: int, block_size: int) -> int:
    """Number of blocks a file of ``file_size`` bytes has at ``block_size`` (0 for an empty file)."""
    return -(-file_size // block_size)


def block_length(file_size: int, block_size: int, index: int) -> int:
    """Length of block ``index``: ``block_size`` except the last block, which is the remainder."""
    start = index * block_size
    return max(0, min(block_size, file_size - start))


def metered_messages(payload_bytes: int, topic_bytes: int) -> int:
    """How many messages AWS bills for one publish (5 KB steps of payload + topic, at least 1)."""
    return max(1, -(-(payload_bytes + topic_bytes) // METERING_STEP_BYTES))
