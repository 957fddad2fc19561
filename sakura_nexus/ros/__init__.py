"""rclpy adapters shared by every node: parameters from the schema, QoS, diagnostics, runner."""
