"""Flower ClientApps: thin handlers that decode, call fedhar, encode."""
