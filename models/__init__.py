"""lnscope model zoo: Transformers of every layer-normalization placement (Flax NNX).

from models import ModelConfig, build_model, PLACEMENTS, NORMS, ARCHS
model = build_model(ModelConfig(arch="decoder", placement="b2t", layers=18), seed=0)
logits = model(tokens)
"""

from models.build import build_model, init_state
from models.config import ARCHS, ModelConfig
from models.norms import NORMS
from models.ops import LayerLoop, ModelOps, Projection
from models.placements import PLACEMENTS, Placement
from models.spec import StackSpec
from models.transformer import ForwardOutput, Transformer, validate_tokens

__all__ = [
    "ARCHS",
    "NORMS",
    "PLACEMENTS",
    "ForwardOutput",
    "LayerLoop",
    "ModelConfig",
    "ModelOps",
    "Placement",
    "Projection",
    "StackSpec",
    "Transformer",
    "build_model",
    "init_state",
    "validate_tokens",
]
