"""stafast.losses: OIM (the paper's, Sec. 3.5), softmax cross-entropy and batch-hard triplet."""
from .oim import OIMLoss
from .softmax import SoftmaxLoss
from .triplet import TripletLoss

__all__ = ["OIMLoss", "SoftmaxLoss", "TripletLoss"]
