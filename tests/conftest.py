import os
import sys
from pathlib import Path

# helpers (tiny_gguf, stats) live beside the tests; importlib mode does not add this folder
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
