"""What runs on the robot (ROS-free; the ROS adapter is ``nodes/federated_sync.py``): the durable spool and
inbox, the uplink (cumulative deltas -> private, compressed increments), the SuperNode and its
supervisor, the ClientApp and its warm launcher."""
