"""World-model core (ROS-free): camera encoder, latent ensemble world model, training, online learning.

API contract: docs/architecture.md; design, sizes and measured costs: docs/world_model.md.
"""

from .checkpoint import load_checkpoint
from .encoder import ENCODER_ID, ConvEncoder, encoder_from_bytes, encoder_to_bytes, inference_encoder
from .inference import WorldModelSnapshot
from .online import OnlineLearner, Transition
from .serialization import PayloadError, sha256_hex
from .world_model import (
    WORLD_MODEL_ID,
    WorldModel,
    WorldModelConfig,
    world_model_from_bytes,
    world_model_to_bytes,
)

__all__ = [
    "ENCODER_ID", "WORLD_MODEL_ID", "ConvEncoder", "OnlineLearner", "PayloadError", "Transition",
    "WorldModel", "WorldModelConfig", "WorldModelSnapshot", "encoder_from_bytes", "encoder_to_bytes",
    "inference_encoder", "load_checkpoint", "sha256_hex", "world_model_from_bytes", "world_model_to_bytes",
]
