"""Hardware simulators: pure physics models and the OPC UA / Modbus TCP servers around them."""
