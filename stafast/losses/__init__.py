"""stafast.losses: OIM (the paper's, Sec. 3.5), softmax cross-entropy (a classifier on the batch-normalised
feature before the L2 norm) and batch-hard triplet."""
from .oim import OIMLoss
from .softmax import SoftmaxLoss
from .triplet import TripletLoss

# The identity losses the trainer offers (--loss); each says which model output it takes (`takes`).
ID_LOSSES = {"oim": OIMLoss, "softmax": SoftmaxLoss}

__all__ = ["ID_LOSSES", "OIMLoss", "SoftmaxLoss", "TripletLoss"]
