"""stafast.models: the paper's network, built from stafast.ops (it never knows which backend runs)."""
from .backbone import ARCHS, Backbone
from .sta import ABLATIONS, LEGACY_NAMES, STA, STAOutput, build_model, upgrade_state_dict

__all__ = ["ABLATIONS", "ARCHS", "Backbone", "LEGACY_NAMES", "STA", "STAOutput", "build_model", "upgrade_state_dict"]
