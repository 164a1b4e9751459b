"""The conveyor loop: sources, calibration, segmentation, tracking, inference, policy, actuators."""
