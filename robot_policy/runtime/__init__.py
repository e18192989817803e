"""Deployment core with no ROS import (backends, chunk scheduler, safety filter, watchdog): not built yet."""
