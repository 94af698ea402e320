"""Layer 6 (reduction): POD (batch and streaming), clustering and local bases, ECM, Gappy-POD.

Algorithms here only know "rows distributed over ranks + an inner product".
"""
from ddrom.reduction.ecm import ECMResult, IntegrandBasis, PointProducts, ecm, integrand_matrix_columns
from ddrom.reduction.gappy import GappyPOD, gather_point_rows, qdeim_points
from ddrom.reduction.inner import Diagonal, Euclidean, InnerProduct, PetscMatrix
from ddrom.reduction.pod import (
    DEFAULT_METHOD, POD_METHODS, PODResult, frobenius_norm, l2_err_from_relative, pod,
    register_pod_method, truncate,
)
