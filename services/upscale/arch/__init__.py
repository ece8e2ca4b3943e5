"""Network definitions for the upscale stage (state-dict compatible with the official checkpoints)."""
from .rrdbnet import RRDBNet
from .srvgg import SRVGGNetCompact

__all__ = ["RRDBNet", "SRVGGNetCompact"]
