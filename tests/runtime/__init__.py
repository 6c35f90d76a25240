"""Tests of the network runtime."""
