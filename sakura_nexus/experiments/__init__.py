"""Experiments and evaluations that measure the product (ROS-free): the 4-site fleet experiment
(:mod:`.fleet`), online adaptation (:mod:`.adaptation`), the closed-loop control evaluation and its suite
(:mod:`.control_eval`, :mod:`.suite`). The library never depends on them at import time; they run from the
CLI (``sakura-nexus fleet-experiment``, ``sakura-nexus evaluate``) and from ``sakura-nexus train``'s optional
adaptation stage."""
