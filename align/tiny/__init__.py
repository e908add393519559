"""The tiny world: requests, a helpful-only corpus, a self-built model and a reference judge (see world.py)."""
