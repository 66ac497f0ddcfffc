"""perturb stage of MedFM-Robust."""
