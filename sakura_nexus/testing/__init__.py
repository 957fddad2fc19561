"""Test and benchmark stand-ins (ROS-free, no MuJoCo): a kinematic cell and a perfect-model world model
(:mod:`.standin`), a toy latent system (:mod:`.toy`). Nothing in the product imports them."""
