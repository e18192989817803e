"""Rollouts, success with confidence intervals, videos, reports."""
