"""Non-trivial sample values for every custom message (shared by publisher and receiver processes)."""

from __future__ import annotations

import math


def samples():
    from sakura_nexus.msg import ModelDelta, ModelUpdate, Observation, SyncStatus, WorldState

    o = Observation()
    o.header.stamp.sec, o.header.stamp.nanosec, o.header.frame_id = 1234, 567890123, "camera_optical_frame"
    o.encoder_id, o.model_version = "conv64-v1", 7
    o.embedding = [math.sin(i) * 10 ** (i % 5 - 2) for i in range(64)]
    o.quality, o.compute_time, o.latency = 0.8125, 0.00125, 0.00375

    w = WorldState()
    w.header.stamp.sec, w.header.stamp.nanosec, w.header.frame_id = 99, 1, "odom"
    w.model_version, w.horizon, w.latent_dim, w.step_dt = 3, 4, 8, 0.1
    w.latent = [float(i) / 7 for i in range(8)]
    w.predicted = [float(i) * -0.25 for i in range(32)]
    w.pose_x, w.pose_y, w.pose_yaw = 1.5, -2.25, -3.0
    w.collision_risk, w.uncertainty, w.surprise = 0.125, 0.0625, 1e-6

    d = ModelDelta()
    d.header.stamp.sec = 5
    d.model_id, d.base_version, d.sequence, d.sample_count = "world_model", 12, 2**40 + 3, 4096
    d.local_loss, d.codec, d.l2_norm = 0.03125, "topk0.01+q8", 3.5
    d.payload = bytes(range(256)) * 3

    u = ModelUpdate()
    u.header.stamp.sec = 6
    u.model_id, u.version, u.codec = "encoder", 13, "state-dict-v1"
    u.payload = bytes((i * 37) % 256 for i in range(1000))
    u.sha256 = "ab" * 32

    s = SyncStatus()
    s.header.stamp.sec = 7
    s.link_state = SyncStatus.LINK_OFFLINE
    s.pending_deltas, s.spool_bytes, s.bytes_sent, s.bytes_received = 17, 2**33, 123456789, 987654
    s.deltas_acked, s.global_version, s.epsilon_spent, s.last_error = 42, 9, 1.75, "aggregator unreachable"
    return {"observation": o, "world_state": w, "model_delta": d, "model_update": u, "sync_status": s}


def as_dict(msg):
    """Recursively turn a message into plain Python values (exact: no float formatting)."""
    if hasattr(msg, "get_fields_and_field_types"):
        return {f: as_dict(getattr(msg, f)) for f in msg.get_fields_and_field_types()}
    if isinstance(msg, (bytes, bytearray)):
        return bytes(msg)
    if hasattr(msg, "tolist"):
        return msg.tolist()
    if isinstance(msg, (list, tuple)):
        return [as_dict(x) for x in msg]
    return msg
