"""The demo harness (`sakura-nexus demo`, test/e2e/test_e2e.py, bench/bench_closed_loop.py, bench/bench_soak.py):
the MuJoCo factory cell and the sakura_nexus nodes as separate processes, driven through a sequence of
goals from an in-process mission node, with a report (PNG + JSON). It runs beside the robot stack, never in it.

It does not need ROS launch: a small supervisor starts the same executables (lib/sakura_nexus/) with the
same parameter file (config/nexus.yaml), arguments and environment as launch/sim.launch.py does, via
:mod:`sakura_nexus.bringup`. The mission itself is an in-process rclpy node that only talks ROS topics:
goal_pose out; odom, contacts, world_state, plan, cmd_vel, camera_info and sync_status in.

One module per job (ROS-free unless marked)::

    supervisor.py  node processes: start, stop (SIGINT, then SIGKILL), kill -9, restart; RSS and CPU
    latency.py     MissionLog: what a run records, and image -> cmd_vel latency from DDS timestamps
    goals.py       goal picking in the sim's cell (straight obstacle-free legs on request)
    mission.py     (rclpy) the mission node: sends goals, records poses, commands, timestamps; drive()
    pipeline.py    (rclpy) Pipeline: supervisor + mission node, up and down as one context
    report.py      summary (JSON) and the report figure (PNG)
    cli.py         (rclpy) `sakura-nexus demo`

Used like this::

    with Pipeline(out_dir, seed=0, controller="mpc") as pipe:   # processes up, mission node spinning
        goals, layout = pick_goals(0, 2, start=pipe.mission.pose, straight=True)
        drive(pipe.mission, goals, goal_timeout=30, tolerance=0.3, supervisor=pipe.sup)
    summary = summarise(pipe.mission.log)
"""
