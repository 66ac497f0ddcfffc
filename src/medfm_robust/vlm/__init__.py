"""vlm stage of MedFM-Robust."""
