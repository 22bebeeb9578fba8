"""stafast: diversity-regularized spatiotemporal attention for video person re-ID (Li et al., CVPR 2018)."""
__version__ = "0.1.0"
