"""Federated fleet sync (ROS-free): delta codecs, clipping/DP, durable spool, FedBuff aggregation,
and the Flower 1.42 ServerApp/ClientApp + launchers (``flower_app``/``launcher``, imported lazily so the
core does not need flwr)."""

from .aggregator import (
    FedBuffAggregator,
    FedBuffConfig,
    GlobalModelStore,
    SubmitResult,
    coordinate_median,
    staleness_weight,
    trimmed_mean,
)
from .codecs import CodecError, ErrorFeedback, codec_id, decode, encode, flatten_tensors, get_codec, unflatten
from .egress import EgressReport, check_egress
from .privacy import GaussianDP, LocalPrivatizer, RDPAccountant, add_gaussian_noise, clip_l2, compute_rdp
from .spool import Inbox, Spool, SpoolEntry, SpoolFull

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
