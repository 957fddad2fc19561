"""Opening rosbag2 bags (MCAP or sqlite3; a bag directory or one storage file) and picking the topics
the world model learns from. Every problem becomes a :class:`BagError` that says what is wrong."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

# role -> accepted message types (ROS 2 names as rosbag2 stores them)
SUPPORTED = {
    "image": ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"),
    "odom": ("nav_msgs/msg/Odometry",),
    "cmd": ("geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped"),
    "contacts": ("std_msgs/msg/Bool",),
}
REQUIRED = ("image", "odom", "cmd")
# the image topic when none is given: raw if the bag has it, else image_transport's compressed one
DEFAULT_IMAGE_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed")
STORAGE_SUFFIXES = (".mcap", ".db3")


class BagError(Exception):
    """A bag that cannot be used (or not for this purpose); the message says why."""


@dataclass
class TopicConfig:
    """Topic names (the defaults are what sim_node publishes; relative names get a leading '/')."""

    image: str = ""  # "" = /camera/image_raw if present, else /camera/image_raw/compressed
    odom: str = "/odom"
    cmd: str = "/cmd_vel"
    contacts: str = "/contacts"  # optional; "" = no contact topic

    def names(self) -> dict[str, str]:
        return {r: _absolute(getattr(self, r)) for r in ("image", "odom", "cmd", "contacts")}


def _absolute(topic: str) -> str:
    return "" if not topic else (topic if topic.startswith("/") else "/" + topic)


def storage_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The files that make up a bag: a storage file itself, or a directory's storage files + metadata."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES or p.name == "metadata.yaml")
    return files


def bag_sha256(path: pathlib.Path) -> str:
    """sha256 of a bag file, or of a directory's files (over 'name sha256' lines, sorted by name)."""
    def file_hash(p: pathlib.Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    if path.is_file():
        return file_hash(path)
    lines = "".join(f"{p.name} {file_hash(p)}\n" for p in storage_files(path))
    return hashlib.sha256(lines.encode()).hexdigest()


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class Bag:
    """One bag, opened with ``rosbags``' rosbag2 Reader; ``selected`` maps role -> Connection.

    ``with Bag(path, topics) as bag: for role, log_ns, msg in bag.messages(("odom", "cmd")): ...``
    Messages that cannot be deserialized are skipped and counted in ``undecodable[role]``; a read
    error part-way (a damaged chunk) stops the stream and is kept in ``read_error``."""

    def __init__(self, path: str | pathlib.Path, topics: TopicConfig | None = None, require: tuple = REQUIRED):
        self.path = pathlib.Path(path)
        self.topics = topics or TopicConfig()
        self.require = require
        self.undecodable: dict[str, int] = {}
        self.read_error: str | None = None
        self._reader = None

    def __enter__(self) -> Bag:
        try:
            from rosbags.rosbag2 import Reader
            from rosbags.typesys import Stores, get_typestore
        except ImportError as e:  # pragma: no cover - rosbags is a dependency
            raise BagError(f"reading bags needs the 'rosbags' package (pip install rosbags): {e}") from None
        p = self.path
        if not p.exists():
            raise BagError(f"{p}: no such file or directory")
        if p.is_dir() and not storage_files(p):
            raise BagError(f"{p}: a directory without a rosbag2 bag (no metadata.yaml, *.mcap or *.db3)")
        if p.is_file() and p.suffix not in STORAGE_SUFFIXES:
            raise BagError(f"{p}: not a rosbag2 storage file (expected *.mcap or *.db3, or a bag directory)")
        # rosbag2's own reader + the stock ROS 2 message definitions: the topics we learn from are all
        # standard types, and a vendor topic with an odd or inconsistent schema must not block the bag
        self._types = get_typestore(Stores.ROS2_HUMBLE)
        try:
            self._reader = Reader(p)
            self._reader.open()
        except Exception as e:  # noqa: BLE001 - rosbags raises several types; all mean "unreadable"
            self._reader = None
            raise BagError(f"{p}: cannot read the bag ({type(e).__name__}: {e}). A truncated or corrupt file? "
                           "An MCAP bag cut short by a crash can often be repaired with `mcap recover`, a "
                           "sqlite3 one with `ros2 bag reindex`") from None
        self.selected = self._select()
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # --- topics ---------------------------------------------------------------------------------
    @property
    def connections(self) -> list:
        return list(self._reader.connections)

    def topic_table(self) -> list[dict]:
        by_topic: dict[str, dict] = {}
        for c in self._reader.connections:
            e = by_topic.setdefault(c.topic, {"topic": c.topic, "type": c.msgtype, "count": 0})
            e["count"] += int(c.msgcount)
        return sorted(by_topic.values(), key=lambda e: e["topic"])

    def _select(self) -> dict:
        names = self.topics.names()
        have = {c.topic: c for c in self._reader.connections}
        listing = ", ".join(f"{t} [{c.msgtype}]" for t, c in sorted(have.items())) or "no topics at all"
        if not names["image"]:
            names["image"] = next((t for t in DEFAULT_IMAGE_TOPICS if t in have), DEFAULT_IMAGE_TOPICS[0])
        selected = {}
        for role, topic in names.items():
            if not topic:
                continue
            conns = [c for c in self._reader.connections if c.topic == topic]
            if not conns:
                if role in self.require:
                    raise BagError(f"{self.path}: no {role} topic {topic!r} in the bag (it has: {listing}); "
                                   f"name it with --{role}-topic")
                continue
            types = {c.msgtype for c in conns}
            bad = types - set(SUPPORTED[role])
            if bad or len(types) > 1:
                raise BagError(f"{self.path}: {role} topic {topic} has type {', '.join(sorted(types))}; "
                               f"supported: {', '.join(SUPPORTED[role])}")
            selected[role] = conns
        return selected

    def type_of(self, role: str) -> str:
        return self.selected[role][0].msgtype

    # --- messages -------------------------------------------------------------------------------
    def message_count(self, roles) -> int:
        return sum(int(c.msgcount) for r in roles if r in self.selected for c in self.selected[r])

    def messages(self, roles) -> Iterator[tuple[str, int, object]]:
        """(role, log time ns, deserialized message) in the bag's log-time order."""
        role_of = {c.id: r for r in roles if r in self.selected for c in self.selected[r]}
        conns = [c for r in roles if r in self.selected for c in self.selected[r]]
        if not conns:
            return
        it = self._reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - a damaged chunk: keep what was read, say so
                self.read_error = f"{type(e).__name__}: {e}"
                return
            con, log_ns, raw = item
            role = role_of[con.id]
            try:
                msg = self._types.deserialize_cdr(raw, con.msgtype)
            except Exception:  # noqa: BLE001 - undecodable payload or unknown schema: counted
                self.undecodable[role] = self.undecodable.get(role, 0) + 1
                continue
            yield role, int(log_ns), msg
