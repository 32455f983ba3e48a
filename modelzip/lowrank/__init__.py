"""Truncated-SVD factorization of Linear and Conv2d layers (the `lowrank` pass)."""
