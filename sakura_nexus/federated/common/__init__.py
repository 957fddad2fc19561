"""What both sides of the wire use (ROS-free): delta codecs, durable SQLite state, clipping / DP and the
accountant, the wire protocol, signed model updates, weights <-> flat vectors, the egress check, Flower
plumbing and the records both Flower apps share."""
