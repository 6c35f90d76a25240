"""Attacks on a real aggregator process: outsiders, hostile insiders, floods, restarts."""
