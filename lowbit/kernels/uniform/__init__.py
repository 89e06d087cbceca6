"""Uniform int1..int8 kernels (W = (q - z) * s): the family package's import surface."""
from . import configs
from .launch import FAMILY, UniformFamily, launch, uniform_linear, workspace_numel

__all__ = ["FAMILY", "UniformFamily", "launch", "uniform_linear", "workspace_numel", "configs"]
