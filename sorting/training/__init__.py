"""Training and evaluation loops, metrics, calibration, tracking and distributed launch."""
