"""Generation backends behind one interface, so every generating stage can swap in-process and served models."""

from align.generation.base import Backend, generate_sharded
from align.generation.transformers_backend import TransformersBackend, load_backend

__all__ = ["Backend", "TransformersBackend", "generate_sharded", "load_backend"]
