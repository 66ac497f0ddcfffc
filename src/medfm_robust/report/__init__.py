"""report stage of MedFM-Robust."""
