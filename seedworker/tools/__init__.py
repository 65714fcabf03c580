"""Operator and user tools on top of the engine: the command line, inspect, export/import, evaluate, simulate."""
