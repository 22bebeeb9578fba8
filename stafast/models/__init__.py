"""stafast.models: the paper's network, built from stafast.ops (it never knows which backend runs)."""
from .backbone import ARCHS, Backbone
from .sta import ABLATIONS, DIVERSITY, ENHANCE_SCALES, SPATIAL, STA, TEMPORAL, STAOutput, build_model

__all__ = ["ABLATIONS", "ARCHS", "DIVERSITY", "ENHANCE_SCALES", "SPATIAL", "STA", "TEMPORAL", "Backbone", "STAOutput",
           "build_model"]
