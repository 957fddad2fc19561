"""What both Flower apps share: the conversion between this project's record dicts and Flower's
``RecordDict``, the ``(robot, seq)`` range strings of the secure mode, the secure mode's participant
weight and the federated logger.
"""

from __future__ import annotations

import contextlib
import logging

from flwr.app import ConfigRecord, RecordDict

LOG = logging.getLogger("sakura_nexus.federated")

def to_recorddict(recs: dict[str, dict]) -> RecordDict:
    return RecordDict({k: ConfigRecord(v) for k, v in recs.items()})

def from_recorddict(rd: RecordDict) -> dict[str, dict]:
    out = {}
    for k in rd.keys():
        with contextlib.suppress(TypeError, KeyError):
            out[k] = dict(rd.config_records[k])
    return out

SECURE_WEIGHT = 1  # every participant counts once: the unmasked vector is the mean over the group

def format_ranges(entries) -> str:
    return ",".join(f"{e.seq_first}-{e.seq}" for e in entries)

def parse_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for part in str(text or "").split(","):
        if part:
            a, _, b = part.partition("-")
            out.append((int(a), int(b)))
    return out
