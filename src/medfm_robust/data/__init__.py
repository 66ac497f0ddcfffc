"""data stage of MedFM-Robust."""
