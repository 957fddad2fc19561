"""QoS profiles used across sakura_nexus (one place, so every node agrees)."""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)


def sensor_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """Camera-style input: keep only the newest sample (depth 1) so the latest frame wins."""
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel,
                      durability=DurabilityPolicy.VOLATILE)


def state_qos(depth: int = 10) -> QoSProfile:
    """State topics (odom, world_state, cmd_vel, observation): reliable, volatile."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def model_qos() -> QoSProfile:
    """Model topics (model_update): reliable + transient-local ("latched"), so late joiners get the last model."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def describe(qos: QoSProfile) -> str:
    return f"{qos.reliability.name.lower()}/{qos.durability.name.lower()}/depth={qos.depth}"
