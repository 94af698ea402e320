"""Layer 2: meshes (generation, import, partition into one subdomain per rank), reference elements."""
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.reference import CELL_TYPES, FACE_TYPES, FACES

__all__ = ["Mesh", "CELL_TYPES", "FACE_TYPES", "FACES"]
