"""Federated fleet sync (ROS-free), by side of the wire: ``robot/`` (spool, uplink, SuperNode, ClientApp),
``fleet/`` (FedBuff aggregation and model store, ServerApps, SuperLink launcher), ``common/`` (codecs,
durable state, privacy, protocol, signing, weights, Flower plumbing). The Flower modules are imported
lazily, so the core does not need flwr; the names below are the ROS-free core's."""

from .common.codecs import CodecError, ErrorFeedback, codec_id, decode, encode, flatten_tensors, get_codec, unflatten
from .common.egress import EgressReport, check_egress
from .common.privacy import GaussianDP, LocalPrivatizer, RDPAccountant, add_gaussian_noise, clip_l2, compute_rdp
from .fleet.aggregator import (
    FedBuffAggregator,
    FedBuffConfig,
    GlobalModelStore,
    SubmitResult,
    coordinate_median,
    staleness_weight,
    trimmed_mean,
)
from .robot.spool import Inbox, Spool, SpoolEntry, SpoolFull

__all__ = [
    "CodecError",
    "EgressReport",
    "ErrorFeedback",
    "FedBuffAggregator",
    "FedBuffConfig",
    "GaussianDP",
    "GlobalModelStore",
    "Inbox",
    "LocalPrivatizer",
    "RDPAccountant",
    "Spool",
    "SpoolEntry",
    "SpoolFull",
    "SubmitResult",
    "add_gaussian_noise",
    "check_egress",
    "clip_l2",
    "codec_id",
    "compute_rdp",
    "coordinate_median",
    "decode",
    "encode",
    "flatten_tensors",
    "get_codec",
    "staleness_weight",
    "trimmed_mean",
    "unflatten",
]
