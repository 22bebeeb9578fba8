"""stafast.data: frame sampling (Sec. 3.1); datasets, synthetic data and the DALI pipeline come next."""
from .sampling import MODES, RestrictedRandomSampler, chunk_bounds, sample_frames

__all__ = ["MODES", "RestrictedRandomSampler", "chunk_bounds", "sample_frames"]
