"""The group generation a batch was read under, from confluent-kafka's consumer group metadata: the
runtime commits nothing read under generation -1 (a woken zombie whose client has left its group;
docs/decisions/0007-fencing-woken-zombies.md)."""

from __future__ import annotations

import sys

CGMD_MAGIC = b"CGMDv2:"


def generation_of(group_metadata: object) -> int:
    """The group generation in confluent-kafka's consumer group metadata (librdkafka's serialisation:
    b"CGMDv2:", then the generation as a native int32); -1 when the client holds none. A format this
    does not know reads as generation 0, which leaves the broker's own check to fence."""
    if not isinstance(group_metadata, bytes) or not group_metadata.startswith(CGMD_MAGIC):
        return 0
    start = len(CGMD_MAGIC)
    return int.from_bytes(group_metadata[start:start + 4], sys.byteorder, signed=True)
