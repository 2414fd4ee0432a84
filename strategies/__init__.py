"""Flower server strategies and strategy wrappers for fedhar."""
