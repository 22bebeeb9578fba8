"""stafast.data: datasets in their published layouts, synthetic data, sampling and clip pipelines.

- datasets: MARS, ILIDSVID, PRID2011 (+ Tracklet, VideoTracklet, DatasetError); dukev, lsvid, mevid, ccvid:
  DukeV, LSVID, MEVID, CCVID; catalog: the registry DATASETS, `load_dataset` by CLI name
- manifest: VideoFiles, tracklets as video files listed by a manifest (--dataset videos)
- video: video files with PyAV (frame count from the container, decoding the sampled frames)
- synth: `python -m stafast.data.synth --layout mars|ilidsvid|prid2011|videos --out DIR`
- sampling: restricted random sampling (Sec. 3.1)
- plan: which frames each sample of an epoch reads and how it is augmented (shared by both pipelines),
  ShardedPlan for DDP
- frames: reading a clip's frames (images or video), ImageNet normalisation
- loader / dali: the torch DataLoader path and the DALI pipeline, `build_loader` picks
"""
from .catalog import DATASET_NAMES, DATASETS, default_protocol, load_dataset, protocol_attrs
from .ccvid import CCVID
from .datasets import ILIDSVID, MARS, PRID2011, DatasetError, Tracklet, VideoTracklet
from .dukev import DukeV
from .lsvid import LSVID
from .mevid import MEVID
from .loader import PIPELINES, build_loader, dali_available
from .manifest import VideoFiles
from .plan import AUGMENTATIONS, Augmentation, ClipAugment, ClipPlan, ShardedPlan, parse_augment
from .sampling import MODES, RestrictedRandomSampler, chunk_bounds, sample_frames

__all__ = ["AUGMENTATIONS", "CCVID", "DATASETS", "DATASET_NAMES", "ILIDSVID", "LSVID", "MARS", "MEVID", "MODES",
           "PIPELINES", "PRID2011", "Augmentation", "ClipAugment", "ClipPlan", "DatasetError", "DukeV",
           "RestrictedRandomSampler", "ShardedPlan", "Tracklet", "VideoFiles", "VideoTracklet", "build_loader",
           "chunk_bounds", "dali_available", "default_protocol", "load_dataset", "parse_augment", "protocol_attrs",
           "sample_frames"]
