"""Helpers the test modules share; no tests here (trial finds only test_*.py)."""
