"""Figures and reports for people: per-stage plots logged to MLflow, and one report per pipeline run."""
