"""Shared test plumbing: replies, grids, the task identity Flower messages need, fleets and
reference implementations that tests compare against."""
