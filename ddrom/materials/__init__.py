"""Layer 4: constitutive laws behind one vectorized interface.

``from_config(cfg)`` builds a law from the case file's ``[material]`` table, looked up by
``cfg["law"]`` in the table :data:`LAWS` (``"elastic"``, ``"chaboche"``, ``"j2"``,
``"norton"``, ``"umat"`` for a compiled plugin); see :mod:`ddrom.materials.base` for the interface.
"""
from ddrom.materials.base import (LAWS, UPDATE_CHUNK, ElasticBound, Material, MaterialContext, MaterialError, Response,
                                  ReturnMappingError, from_config, register_law, update_in_chunks)
from ddrom.materials import elastic as _elastic  # noqa: F401  (registers "elastic")
from ddrom.materials import chaboche as _chaboche  # noqa: F401  (registers "chaboche", "j2", "norton")
from ddrom.materials import plugin as _plugin  # noqa: F401  (registers "umat")
from ddrom.materials.chaboche import Chaboche
from ddrom.materials.elastic import Elastic

__all__ = ["from_config", "Material", "MaterialContext", "MaterialError", "Response", "ReturnMappingError", "LAWS",
           "register_law", "update_in_chunks", "UPDATE_CHUNK", "ElasticBound",
           "Elastic", "Chaboche"]
