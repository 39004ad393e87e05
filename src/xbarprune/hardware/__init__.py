"""Hardware descriptions: crossbar and device specs, weight <-> conductance conversion."""

from xbarprune.hardware.conductance import decode, encode, weight_scale
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec, Encoding

__all__ = ["CrossbarSpec", "DeviceSpec", "Encoding", "decode", "encode", "weight_scale"]
