"""ROS 2 nodes of robot_policy: ``policy_node`` (a LifecycleNode over :mod:`robot_policy.runtime`) and
``sim_robot_node`` (a simulated robot on the same topics). Message conversion lives in :mod:`.messages`,
topic names and QoS in :mod:`.topics`; neither node holds policy or safety logic."""
