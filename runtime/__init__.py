"""Device side: llama.cpp backend, model location, `run` orchestration."""
