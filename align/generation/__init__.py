"""Generation backends behind one interface, so every generating stage can swap in-process and served models."""

from align.generation.base import Backend, generate_sharded, generation_metrics
from align.generation.factory import build_backend
from align.generation.transformers_backend import TransformersBackend, load_backend

__all__ = ["Backend", "TransformersBackend", "build_backend", "generate_sharded", "generation_metrics", "load_backend"]
