"""MedFM-Robust: SSIM-calibrated robustness benchmarking of medical foundation models."""

__version__ = "0.1.0"
