"""Actuators of the edge agent (lock, unlock): an ABC, a registry and the CAN, GPIO and virtual plugins."""

from edge.actuators.base import ACTIONS, ACTUATORS, Actuator, create_actuator

__all__ = ["ACTIONS", "ACTUATORS", "Actuator", "create_actuator"]
