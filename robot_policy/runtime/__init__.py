"""Deployment core with no ROS import: backends (torch, torch.compile, ONNX Runtime, TensorRT) behind one
interface, the one sampling loop that drives them, and deploy bundles (export, verified load).
Chunk scheduler, safety filter, watchdog and transports: not built yet."""
