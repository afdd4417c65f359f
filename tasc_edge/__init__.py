"""tasc-edge: task-specific speculative decoding for small language models on edge CPUs.

The core (this package's top-level modules) needs numpy only. `tasc_edge.runtime` (device
side) and `tasc_edge.export` (workstation side) bring their own optional dependencies.
"""

__version__ = "0.1.0"
