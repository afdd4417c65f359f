import os
import sys
from pathlib import Path

# helpers (tiny_gguf, stats) live beside the tests; importlib mode does not add this folder
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="run the fuzzed exactness tests with >= 10,000 random cases each (not CI)")


def pytest_configure(config):
    config.fuzz_counts = {}  # fuzz cases that ran and passed, by test


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.fuzz_counts:
        terminalreporter.write_line("fuzz cases passed: " + ", ".join(
            f"{k} {v}" for k, v in sorted(config.fuzz_counts.items())))
