"""Device profiles as TOML data (loaded by tasc_edge/predict.py)."""
