"""seg stage of MedFM-Robust."""
