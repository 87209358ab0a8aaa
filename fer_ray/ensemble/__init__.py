"""Ensembles: soft voting, selection, calibration, decision rules (no Ray)."""
