"""fedhar: federated on-device learning simulator for wearable human-activity recognition."""

__version__ = "0.1.0"
