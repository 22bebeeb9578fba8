"""stafast.models: the paper's network, built from stafast.ops (it never knows which backend runs)."""
from .backbone import ARCHS, Backbone
from .sta import (ABLATIONS, DIVERSITY_KINDS, SPATIAL_POOLINGS, STA, TEMPORAL_POOLINGS, STAOutput, build_model,
                  with_ablation)

__all__ = ["ABLATIONS", "ARCHS", "DIVERSITY_KINDS", "SPATIAL_POOLINGS", "STA", "TEMPORAL_POOLINGS", "Backbone",
           "STAOutput", "build_model", "with_ablation"]
