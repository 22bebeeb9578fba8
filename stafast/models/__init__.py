"""stafast.models: the paper's network, built from stafast.ops (it never knows which backend runs)."""
from .backbone import ARCHS, Backbone
from .sta import ABLATIONS, STA, STAOutput, build_model

__all__ = ["ABLATIONS", "ARCHS", "Backbone", "STA", "STAOutput", "build_model"]
