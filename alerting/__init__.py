"""Alarm rules and delivery."""
