"""What runs on the aggregator host (no ROS): FedBuff aggregation and the versioned global-model store,
the Flower ServerApps, the SuperLink launcher (``sakura-nexus aggregator``) and the fleet deployment
defaults."""
