"""Deployment core with no ROS import.

* backends (torch, torch.compile, ONNX Runtime, TensorRT) behind one interface, the one sampling loop that
  drives them (``sampling``), real-time chunking in that loop (``rtc``), deploy bundles (``bundle``);
* the control side: the asynchronous inference runner (``runner``), the chunk scheduler (``scheduler``), the
  safety filter (``safety``) and the watchdog (``watchdog``), composed per control period by the
  :class:`~robot_policy.runtime.controller.PolicyController`; what a robot sends and takes on the wire
  (``robot_io``), the trajectory-following semantics of the simulated robots (``trajectory``), the
  loopback DDS environment of every ROS 2 process (``dds``).

The ROS 2 nodes (``ros_ws/src/robot_policy_ros``) and the in-process runs on simulated time
(:mod:`robot_policy.pipelines.runtime_sim`) are thin transports over the controller.
"""
