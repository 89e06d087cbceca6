"""Lookup-table kernels (lut3/lut4, sq3/sq4 with sparse outliers, nf4): the family package's import surface."""
from . import configs
from .launch import FAMILY, LutFamily, launch, lut_linear, workspace_numel

__all__ = ["FAMILY", "LutFamily", "launch", "lut_linear", "workspace_numel", "configs"]
