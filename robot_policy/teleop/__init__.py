"""Recording into the episode store (the recorder every source writes through); teleop devices: not built yet."""
