"""stafast.models: the paper's network, built from stafast.ops (it never knows which backend runs)."""
from .backbone import ARCHS, Backbone
from .sta import (ABLATIONS, DIVERSITY, ENHANCE_SCALES, LEGACY_NAMES, SPATIAL, STA, TEMPORAL, STAOutput, build_model,
                  upgrade_state_dict)

__all__ = ["ABLATIONS", "ARCHS", "DIVERSITY", "ENHANCE_SCALES", "LEGACY_NAMES", "SPATIAL", "STA", "TEMPORAL", "Backbone",
           "STAOutput", "build_model", "upgrade_state_dict"]
