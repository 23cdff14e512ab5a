"""Trajectory analytics."""
