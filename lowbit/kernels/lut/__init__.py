"""Lookup-table kernels (lut3/lut4, sq3/sq4 with sparse outliers, nf4): the family package's import surface."""
from . import configs
from .launch import FAMILY, LutFamily, add_csr_outliers, launch, lut_linear, tile_outliers

__all__ = ["FAMILY", "LutFamily", "launch", "lut_linear", "tile_outliers", "add_csr_outliers", "configs"]
