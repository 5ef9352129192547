"""Honest evaluation: metrics, backtests, baselines, uncertainty, interpretability and reports.

Pure library (numpy, scikit-learn, torch, plotly); never imports dagster.
"""
