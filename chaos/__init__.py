"""Chaos harness for WarpSocket: faults injected at random, every message accounted for."""
