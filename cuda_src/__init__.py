"""CUDA sources of the longconv kernels (``*.cuh`` / ``*.cu``), installed as package data."""
