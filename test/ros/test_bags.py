"""Learning from bags: bags written by an independent writer (rosbags' rosbag2 Writer, stock message
schemas) in both storage formats, raw and compressed images, out-of-order and damaged input."""

import json
import math
import shutil

import numpy as np
import pytest
from bag_writer import NS, Drive, storage_file, write_bag

pytest.importorskip("rosbags")

from sakura_nexus.bags.dataset import AlignConfig, load_bag
from sakura_nexus.bags.reader import BagError, TopicConfig


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    out = {}
    for name, kw in {"mcap": {}, "sqlite3": {"storage": "sqlite3"}, "jpeg": {"compressed": "jpeg"},
                     "png_sqlite3": {"compressed": "png", "storage": "sqlite3"},
                     "shuffled": {"jitter": 0.08, "shuffle": True}}.items():
        counts = write_bag(root / name, **kw)
        out[name] = (root / name, counts)
    return out


def test_both_storage_formats_give_the_same_windows_and_the_ground_truth(bags):
    d = Drive()
    a, b = load_bag(bags["mcap"][0]), load_bag(bags["sqlite3"][0])
    for f in ("images", "proprio", "actions", "collided"):
        np.testing.assert_array_equal(getattr(a.data, f), getattr(b.data, f))
    # 8 s at 0.1 s: 80 grid points, 79 steps, windows of 30 -> starts 0, 30 and 49 (aligned to the end)
    assert a.report["alignment"]["grid_points"] == 80
    assert a.window_starts == [0, 30, 49]
    assert a.report["segments"]["steps_used"] == 79
    # actions: the command held over each step; proprio: the odometry at each grid time
    for k in (0, 9, 10, 25, 55):
        t = d.t0 + k * 0.1
        assert np.allclose(a.actions[k], d.cmd(t + 0.05), atol=1e-6), k
        x, y, yaw, v, w = d.pose(t)
        assert np.allclose(a.proprio[k], [x, y, math.cos(yaw), math.sin(yaw), v, w], atol=1e-5), k
    # collisions: contact messages are True in [3.0, 3.5) s -> steps 29..34 (contact in (t_k, t_k+1])
    col = np.zeros(80, bool)
    for s, win_col in zip(a.window_starts, a.data.collided, strict=True):
        col[s:s + 30] |= win_col
    assert np.flatnonzero(col).tolist() == [29, 30, 31, 32, 33, 34]
    # frames: the picture of the grid time, resized like perception does
    import cv2

    ref = cv2.resize(d.frame(d.t0 + 1.0), (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(a.data.images[0, 10], ref)


def test_compressed_images_jpeg_and_png_decode_like_raw(bags):
    raw = load_bag(bags["mcap"][0]).data.images
    png = load_bag(bags["png_sqlite3"][0])
    jpg = load_bag(bags["jpeg"][0])
    assert png.report["topics"]["image"] == {"topic": "/camera/image_raw/compressed",
                                             "type": "sensor_msgs/msg/CompressedImage"}
    np.testing.assert_array_equal(png.data.images, raw)  # lossless
    err = np.abs(jpg.data.images.astype(int) - raw).mean()
    assert 0 < err < 4, err  # lossy, but the same picture


def test_out_of_order_messages_are_sorted_by_stamp_and_counted(bags):
    ref = load_bag(bags["mcap"][0])
    got = load_bag(bags["shuffled"][0])  # delivery delays up to 80 ms, written in random order
    s = got.report["streams"]
    assert s["image"]["reordered"] > 0 and s["odom"]["reordered"] > 0
    assert s["image"]["non_monotonic"] == 0
    np.testing.assert_array_equal(got.data.images, ref.data.images)
    np.testing.assert_allclose(got.data.proprio, ref.data.proprio)
    # headerless Twist: log time minus the median odometry delay, so up to ~40 ms off: only the steps
    # in which the command changes (every 10th; the change lands in the neighbour step) may differ
    diff = np.abs(got.data.actions - ref.data.actions).max(-1)  # (windows, steps)
    starts = np.asarray(got.window_starts)[:, None] + np.arange(diff.shape[1])[None]
    assert (diff[(starts % 10 != 9) & (starts % 10 != 0)] < 1e-6).all()
    assert diff.max() < 0.5 * 0.6  # at most 40 % of a step with the neighbouring command


def test_a_camera_gap_cuts_the_segment_and_is_counted(tmp_path):
    write_bag(tmp_path / "gap", Drive(seconds=10.0), camera_gap=(4.0, 6.0))
    b = load_bag(tmp_path / "gap", cfg=AlignConfig(segment_steps=20))
    dropped = b.report["dropped"]
    assert 19 <= dropped["no_frame_within_tolerance"] <= 21  # 2 s of grid points without a frame
    assert b.report["segments"]["count"] == 2
    for s in b.window_starts:  # no window crosses the gap
        assert s + 20 <= 40 or s >= 60


def test_stamps_jumping_back_are_dropped_and_counted(tmp_path):
    # frames 100..119 carry stamps 30 s in the past (a clock reset): dropped, not re-sorted
    write_bag(tmp_path / "reset", image_stamp_shift={i: -30.0 for i in range(100, 120)})
    b = load_bag(tmp_path / "reset", cfg=AlignConfig(segment_steps=10))
    assert b.report["streams"]["image"]["non_monotonic"] == 20
    assert b.report["dropped"]["no_frame_within_tolerance"] >= 5
    assert b.data is not None


def test_bad_bags_give_clear_errors(tmp_path, bags):
    # truncated files (both formats): refused at open with a clear message
    for name in ("mcap", "sqlite3"):
        src = storage_file(bags[name][0])
        cut = tmp_path / f"cut_{name}"
        cut.mkdir()
        data = src.read_bytes()
        (cut / src.name).write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(BagError, match="truncated or corrupt"):
            load_bag(cut / src.name)
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 10)
    with pytest.raises(BagError, match="cannot read the bag"):
        load_bag(garbage)
    with pytest.raises(BagError, match="no such file"):
        load_bag(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="without a rosbag2 bag"):
        load_bag(tmp_path / "empty")
    # missing topic: the error lists what the bag has
    with pytest.raises(BagError, match=r"no odom topic '/odometry'.*/odom \[nav_msgs/msg/Odometry\]"):
        load_bag(bags["mcap"][0], TopicConfig(odom="/odometry"))
    # a topic of a type we cannot learn from
    with pytest.raises(BagError, match="cmd topic /contacts has type std_msgs/msg/Bool; supported"):
        load_bag(bags["mcap"][0], TopicConfig(cmd="/contacts"))


def test_unknown_schema_topics_are_ignored_and_an_unknown_type_selected_is_refused(tmp_path):
    msgdef = "int32 ticks\nfloat64 temperature\n"

    def extra(w, ts):
        c = w.add_connection("/vendor/status", "acme_msgs/msg/Status", msgdef=msgdef, rihs01="RIHS01_" + "0" * 64)
        for i in range(10):
            w.write(c, 100 * NS + i * NS // 10, b"\x00\x01\x00\x00" + bytes(12))

    write_bag(tmp_path / "vendor", extra=extra)
    b = load_bag(tmp_path / "vendor")
    assert b.data is not None
    assert {"topic": "/vendor/status", "type": "acme_msgs/msg/Status", "count": 10} in b.report["all_topics"]
    with pytest.raises(BagError, match="acme_msgs/msg/Status; supported"):
        load_bag(tmp_path / "vendor", TopicConfig(odom="/vendor/status"))


def test_no_usable_segment_writes_nothing(tmp_path, bags, capsys):
    from sakura_nexus.bags.train import bag_train_main

    models = tmp_path / "models"
    # a 4 Hz camera cannot feed a 10 Hz model: every segment is cut (same frame twice / no frame)
    write_bag(tmp_path / "slow", Drive(image_hz=4.0))
    rc = bag_train_main(["--bag", str(tmp_path / "slow"), "--models", str(models), "--out", str(tmp_path / "o"),
                         "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no usable segment" in err and "no checkpoint written" in err
    assert "steps_same_frame_twice" in err and "no_frame_within_tolerance" in err
    src = storage_file(bags["mcap"][0])
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / src.name).write_bytes(src.read_bytes()[:5000])
    assert bag_train_main(["--bag", str(tmp_path / "cut" / src.name), "--models", str(models),
                           "--no-progress"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not models.exists() and not list(tmp_path.glob(".models.tmp-*"))


def test_train_from_bags_fine_tunes_and_the_nodes_load_it(tmp_path, bags):
    from sakura_nexus.bags.train import bag_train_main
    from sakura_nexus.models.checkpoint import load_checkpoint
    from sakura_nexus.models.encoder import encoder_from_bytes
    from sakura_nexus.models.serialization import sha256_hex

    models = tmp_path / "models"
    paths = [str(bags["mcap"][0]), str(storage_file(bags["jpeg"][0]))]
    rc = bag_train_main(["--bag", *paths, "--models", str(models), "--out", str(tmp_path / "out"),
                         "--joint-iters", "3", "--wm-iters", "5", "--segment-steps", "20", "--no-progress"])
    assert rc == 0
    ck = load_checkpoint(models)  # the world-model node's loader (verifies the sha256 in the manifest)
    encoder_from_bytes((models / "encoder.bin").read_bytes())  # perception's loader
    m = ck.manifest
    assert m["produced_by"] == "sakura-nexus train --bag"
    entries = m["data"]["bags"]
    assert [e["name"] for e in entries] == [bags["mcap"][0].name, storage_file(bags["jpeg"][0]).name]
    assert entries[1]["sha256"] == sha256_hex(storage_file(bags["jpeg"][0]).read_bytes())
    assert entries[0]["storage"] == "mcap" and len(entries[0]["sha256"]) == 64
    assert entries[1]["topics"]["image"]["type"] == "sensor_msgs/msg/CompressedImage"
    assert entries[0]["time_range_s"] == [100.0, 107.9]
    assert m["init_checkpoint"]["world_model_sha256"]
    shipped = load_checkpoint()
    # fine-tuned: same architecture, different weights
    sd0, sd1 = shipped.world_model.state_dict(), ck.world_model.state_dict()
    assert sd0.keys() == sd1.keys() and any(not np.allclose(sd0[k], sd1[k]) for k in sd0)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["summary"]["before"] and metrics["summary"]["after"]
    assert (tmp_path / "out" / "loss.png").is_file()
    # a second run replaces the checkpoint as a whole
    shutil.copy(models / "manifest.json", tmp_path / "first.json")
    assert bag_train_main(["--bag", paths[0], "--models", str(models), "--out", str(tmp_path / "out"),
                           "--joint-iters", "2", "--wm-iters", "2", "--no-progress", "--seed", "1"]) == 0
    assert json.loads((models / "manifest.json").read_text())["data"]["bags"][0]["name"] == bags["mcap"][0].name
    assert load_checkpoint(models).manifest["seed"] == 1


def test_inspect_report_matches_the_bag(tmp_path, bags):
    from sakura_nexus.bags.report import inspect_main

    path, counts = bags["jpeg"]
    out = tmp_path / "report"
    assert inspect_main(["--bag", str(path), "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    b = rep["bags"][0]
    assert {t["topic"]: t["count"] for t in b["all_topics"]} == counts
    rates = {t["topic"]: t["rate_hz"] for t in b["all_topics"]}
    assert rates["/camera/image_raw/compressed"] == pytest.approx(30.0, rel=0.02)
    assert rates["/odom"] == pytest.approx(50.0, rel=0.02)
    assert b["duration_s"] == pytest.approx(8.0, abs=0.05)
    assert b["segments"]["windows"] == 3
    assert (out / "report.png").stat().st_size > 10_000
    # a bad bag is reported, not a crash
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"not a bag")
    assert inspect_main(["--bag", str(bad), "--out", str(tmp_path / "r2"), "--no-progress"]) == 2


@pytest.mark.ros
def test_the_demo_recorder_writes_a_bag_train_reads(ros_node, tmp_path):
    """Recorder (demo --record) on live topics: sim-time log stamps, camera JPEG-compressed, and the
    bag loads for training with every topic counted."""
    import time

    from geometry_msgs.msg import Twist
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    from sakura_nexus.ros.bag_recorder import Recorder

    rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {k: ros_node.create_publisher(t, k, rel) for k, t in (
        ("/clock", Clock), ("/camera/image_raw", Image), ("/odom", Odometry), ("/cmd_vel", Twist),
        ("/contacts", Bool))}
    rec = Recorder(tmp_path / "bag")
    d = Drive()
    time.sleep(1.5)  # discovery
    for i in range(400):  # 4 s of sim time at 100 Hz, camera at 25 Hz, commands at 20 Hz
        t_ns = int((d.t0 + i * 0.01) * NS)
        stamp = Clock()
        stamp.clock.sec, stamp.clock.nanosec = divmod(t_ns, NS)
        pubs["/clock"].publish(stamp)
        od = Odometry()
        od.header.stamp = stamp.clock
        x, y, yaw, v, w = d.pose(t_ns / NS)
        od.pose.pose.position.x, od.pose.pose.position.y = x, y
        od.pose.pose.orientation.z, od.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        od.twist.twist.linear.x, od.twist.twist.angular.z = v, w
        pubs["/odom"].publish(od)
        pubs["/contacts"].publish(Bool(data=False))
        if i % 4 == 0:
            rgb = d.frame(t_ns / NS)
            img = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
            img.header.stamp = stamp.clock
            img.data = rgb.tobytes()
            pubs["/camera/image_raw"].publish(img)
        if i % 5 == 0:
            tw = Twist()
            tw.linear.x, tw.angular.z = d.cmd(t_ns / NS)
            pubs["/cmd_vel"].publish(tw)
        time.sleep(0.005)
    time.sleep(1.0)
    counts = rec.close()
    sent = {"/odom": 400, "/contacts": 400, "/camera/image_raw/compressed": 100, "/cmd_vel": 80}
    for topic, n in sent.items():
        assert n - 3 <= counts.get(topic, 0) <= n, (topic, counts)
    b = load_bag(tmp_path / "bag", cfg=AlignConfig(segment_steps=10))
    assert {t["topic"]: t["count"] for t in b.report["all_topics"]}.items() >= {
        k: counts[k] for k in sent}.items()
    assert b.report["topics"]["image"]["type"] == "sensor_msgs/msg/CompressedImage"
    assert b.report["streams"]["odom"]["log_minus_stamp_ms"] < 50  # log time is the sim clock
    assert b.data is not None and b.report["segments"]["windows"] >= 2
