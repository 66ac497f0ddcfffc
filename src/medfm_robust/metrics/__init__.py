"""metrics stage of MedFM-Robust."""
