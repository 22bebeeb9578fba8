"""stafast.data: datasets in their published layouts, synthetic data, sampling and clip pipelines.

- datasets: MARS, ILIDSVID, PRID2011 (+ Tracklet, DatasetError)
- synth: `python -m stafast.data.synth --layout mars|ilidsvid|prid2011 --out DIR`
- sampling: restricted random sampling (Sec. 3.1)
- plan: which frames each sample of an epoch reads (shared by both pipelines)
- loader / dali: the torch DataLoader path and the DALI pipeline, `build_loader` picks
"""
from .datasets import DATASETS, ILIDSVID, MARS, PRID2011, DatasetError, Tracklet
from .loader import build_loader, dali_available
from .plan import ClipPlan
from .sampling import MODES, RestrictedRandomSampler, chunk_bounds, sample_frames

__all__ = ["DATASETS", "ILIDSVID", "MARS", "MODES", "PRID2011", "ClipPlan", "DatasetError", "RestrictedRandomSampler",
           "Tracklet", "build_loader", "chunk_bounds", "dali_available", "sample_frames"]
