# Two commands on a fresh machine:
#   make demo   -- set everything up, then run the main job on the embedded default
#   make test   -- set everything up, then run the whole test suite (slow tests included)
# Setup order matters: torch==2.13.0 (the CPU wheel) goes in first so nothing later can pull a CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
# Debian packages the stack loads at run time: OSMesa for headless MuJoCo rendering (fallback to EGL),
# libusb for pyrealsense2.
DEB_PACKAGES := libosmesa6 libusb-1.0-0 libegl1
# The whole suite, slow tests (tiny end-to-end runs) included; gpu/ros/hardware tests skip themselves where
# the thing is missing. A fresh clone's `bash .ci/run` took 8 min 22 s on 2 quiet cores (656 tests; 378 s of
# tests), setup with the ROS 2 wheels and colcon included (README.md).
PYTEST_ARGS ?= -m "not gpu and not hardware" -n 2
# Real ROS 2 Kilted (rclpy over Fast DDS) from PyPI wheels, into the same venv after torch (../shared/ROS2.md);
# exact pins: the wheels come from one builder. colcon builds the ament package in ros_ws/.
ROS_WHEELS := ros-kilted-rclpy==9.1.2 ros-kilted-rmw-fastrtps-cpp==9.3.3 ros-kilted-sensor-msgs==5.5.1 \
  ros-kilted-trajectory-msgs==5.5.1 ros-kilted-std-msgs==5.5.1 ros-kilted-geometry-msgs==5.5.1 \
  ros-kilted-builtin-interfaces==2.3.0 ros-kilted-lifecycle-msgs==2.3.0 ros-kilted-action-msgs==2.3.0 \
  ros-kilted-ament-index-python==1.11.0 ros-kilted-diagnostic-msgs==5.5.1 ros-kilted-std-srvs==5.5.1 \
  ros-kilted-rcl-interfaces==2.3.0 colcon-common-extensions==0.3.0
ROS_PKG := ros_ws/src/robot_policy_ros

.PHONY: setup system-deps ros test test-fast demo bench lint clean

setup: $(VENV)/.installed

# The ROS 2 wheels and the colcon build of robot_policy_ros (ros_ws/install); rebuilt when the package changes.
ros: ros_ws/install/.built

$(VENV)/.ros-installed: $(VENV)/.installed
	$(BIN)/pip install -q $(ROS_WHEELS)
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch moved to ' + v)"
	touch $@

ros_ws/install/.built: $(VENV)/.ros-installed $(ROS_PKG)/package.xml $(ROS_PKG)/setup.py $(wildcard $(ROS_PKG)/robot_policy_ros/*.py) $(wildcard $(ROS_PKG)/config/*)
	cd ros_ws && PATH=$(abspath $(BIN)):$$PATH AMENT_PREFIX_PATH=$(abspath $(VENV)) \
	  $(abspath $(BIN))/colcon --log-base log build --base-paths src --build-base build --install-base install
	touch $@

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,dev]'
	# robosuite 1.5.2 declares opencv-python (GUI build, aborts headless), mink and pynput, none of which
	# the stack uses: install it without deps; its real runtime deps are in pyproject.toml.
	$(BIN)/pip install -q --no-deps robosuite==1.5.2
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch moved to ' + v)"
	touch $@

# One torch/BLAS thread per pytest-xdist worker: two workers x two threads on two cores thrash.
test: setup ros
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while developing: the slow tests left out.
test-fast: setup ros
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow and not gpu and not hardware" -n 2

demo: setup
	$(BIN)/robot-policy demo

lint: setup
	$(BIN)/ruff check robot_policy tests
	$(BIN)/mypy robot_policy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
