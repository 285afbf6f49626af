"""Disaster-recovery planning: plans as code, readiness, drills and their reports."""
