"""Recording rclpy messages into a rosbag2 (mcap) bag with ``rosbags``.

rosbags cannot decode the bytes ``rclpy.serialization.serialize_message`` writes (trailing padding,
ROS2.md pitfall 4), so messages are copied field by field into rosbags' own message classes and serialised
by rosbags: the bag then opens with rosbags and any rosbag2 tool. rosbags has no rclpy bridge; the copy is
the few lines below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

_NUMERIC = {"double": np.float64, "float": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
            "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
            "octet": np.uint8, "char": np.uint8, "byte": np.uint8}


def type_name(msg: Any) -> str:
    """``sensor_msgs/msg/JointState`` for an rclpy message."""
    package = type(msg).__module__.split(".")[0]
    return f"{package}/msg/{type(msg).__name__}"


def _element(field_type: str) -> str:
    # 'sequence<double>', 'sequence<double, 3>', 'double[3]' -> 'double'
    if field_type.startswith("sequence<"):
        return field_type[len("sequence<"):].split(",")[0].rstrip(">").strip()
    return field_type.split("[")[0]


def to_rosbags(msg: Any, typestore: Any) -> Any:
    """A rosbags message equal to the rclpy message ``msg`` (nested messages and arrays included)."""
    cls = typestore.types[type_name(msg)]
    values: dict[str, Any] = {}
    for name, field_type in msg.get_fields_and_field_types().items():
        value = getattr(msg, name)
        element = _element(field_type)
        is_array = field_type.startswith("sequence<") or field_type.endswith("]")
        if hasattr(value, "get_fields_and_field_types"):
            values[name] = to_rosbags(value, typestore)
        elif is_array and element in _NUMERIC:
            values[name] = np.asarray(value, dtype=_NUMERIC[element])
        elif is_array and "/" in element:
            values[name] = [to_rosbags(v, typestore) for v in value]
        elif is_array:
            values[name] = list(value)
        elif isinstance(value, bytes):  # rclpy gives a 'byte' field (DiagnosticStatus.level) as bytes
            values[name] = value[0]
        else:
            values[name] = value
    return cls(**values)


class BagRecorder:
    """An mcap rosbag2 bag at ``path`` (a directory, created): ``record(topic, msg, t_ns)`` per message."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def record(self, topic: str, msg: Any, t_ns: int) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, type_name(msg), typestore=self.typestore)
            self._connections[topic] = conn
        data = self.typestore.serialize_cdr(to_rosbags(msg, self.typestore), type_name(msg))
        self._writer.write(conn, t_ns, data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        self._writer.close()
