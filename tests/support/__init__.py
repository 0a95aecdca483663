"""Helpers shared by test modules that are not fixtures: running the command line."""
