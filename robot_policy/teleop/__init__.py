"""Teleoperation: devices behind one interface (keyboard, SpaceMouse, leader arms; live or replayed from a
recorded stream), their mapping onto an embodiment's unified actions, the session loop, and the recorder
every source writes into the episode store through."""
