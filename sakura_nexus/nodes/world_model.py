"""world_model_node: observation + odom + cmd_vel -> world_state; learns online; emits model deltas.

Thin adapter over :mod:`sakura_nexus.models` (WorldModel, OnlineLearner, checkpoints):

- inputs are aligned by header stamp: an observation is paired with the odometry sample nearest in
  time (within ``align_tolerance``) and with the command in force at that time; unaligned or stale
  inputs are dropped and counted; inputs stamped more than ``max_clock_offset`` ahead of the node's
  clock (a foreign clock) are dropped before they can enter a buffer, and a backward jump of the
  node's clock (sim reset, ``/clock`` restart) empties the buffers (:mod:`sakura_nexus.clock_guard`);
- inference reads the learner's immutable NumPy snapshot, so the background learning thread never
  blocks a tick;
- transitions for online learning pair ticks ``model_dt`` apart (as the model was trained);
- ``model_delta`` every ``delta_period``: the change of all weights since the last global base
  version (a flat float32 vector, dense codec here; the sync node re-encodes, clips and privatises);
- ``model_update`` (model_id ``world_model``, signed by a trusted fleet key and newer than the
  running version: :meth:`NexusNode.accept_model_update`) replaces the base weights between ticks and
  resets the delta accounting; periodic atomic checkpoints in ``state_dir`` make restarts resume;
- record-level DP-SGD (``dp_noise_multiplier`` > 0, :class:`OnlineLearner`): every ``model_delta``
  carries the record-level epsilon spent so far; the privacy ledger is written to
  ``state_dir/privacy_ledger.json`` *before* each delta goes out, so a restart never forgets spent
  privacy. With ``epsilon_budget`` > 0, once a step would exceed it learning stops, one last delta
  flagged ``budget_exhausted`` goes out, and no further delta is published.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import time
from collections import deque

import numpy as np
import torch
from geometry_msgs.msg import Twist, TwistStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import State, TransitionCallbackReturn
from std_msgs.msg import Bool

from sakura_nexus.federated.common import codecs
from sakura_nexus.federated.common.weights import update_to_world_model_payload
from sakura_nexus.geometry import yaw_of as _yaw
from sakura_nexus.models.checkpoint import load_checkpoint
from sakura_nexus.models.online import OnlineLearner, Transition
from sakura_nexus.models.serialization import PayloadError, atomic_write, sha256_hex
from sakura_nexus.msg import ModelDelta, ModelUpdate, Observation, WorldState
from sakura_nexus.params import WORLD_MODEL
from sakura_nexus.priority import deprioritise_current_thread
from sakura_nexus.ros.node import ERROR, OK, WARN, NexusNode, run
from sakura_nexus.ros.qos import model_qos, state_qos

DELTA_CODEC = "dense"


def _t(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class _Series:
    """Time-ordered samples (t, value) with nearest-in-time lookup; bounded."""

    def __init__(self, maxlen: int = 400):
        self.t: deque[float] = deque(maxlen=maxlen)
        self.v: deque = deque(maxlen=maxlen)

    def add(self, t: float, value) -> bool:
        """Append; False (not added) for a sample older than the newest one (the series stays sorted)."""
        if self.t and t < self.t[-1]:
            return False
        self.t.append(t)
        self.v.append(value)
        return True

    def nearest(self, t: float):
        if not self.t:
            return None, math.inf
        ts = list(self.t)
        i = bisect.bisect_left(ts, t)
        best = min((j for j in (i - 1, i) if 0 <= j < len(ts)), key=lambda j: abs(ts[j] - t))
        return self.v[best], abs(ts[best] - t)

    def at_or_before(self, t: float):
        ts = list(self.t)
        i = bisect.bisect_right(ts, t) - 1
        return self.v[i] if i >= 0 else None


class WorldModelNode(NexusNode):
    def __init__(self, **kwargs):
        super().__init__("world_model_node", WORLD_MODEL, **kwargs)
        self._learner: OnlineLearner | None = None
        self._odom = _Series()
        self._cmd = _Series()
        self._contacts = _Series()
        self._ticks: deque = deque(maxlen=64)       # (t, embedding, proprio, action, z) of recent ticks
        self._predictions: deque = deque(maxlen=64)  # (t_target, z_pred) one model_dt ahead
        self._surprise = 0.0
        self._sequence = 0
        self._final_delta_sent = False  # the budget-exhausted delta went out: no more deltas
        self.run_while_active("learner", self._learn_loop)
        self._pubs = {}
        self.params.on_change(self._on_params)

    def _on_params(self, changed: dict) -> None:
        if self._learner is not None and "learning_rate" in changed:
            self._learner.set_lr(changed["learning_rate"])
        if self._learner is not None and "grad_clip" in changed:
            self._learner.grad_clip = changed["grad_clip"]
        if self._learner is not None and "batch_size" in changed:
            self._learner.batch_size = changed["batch_size"]

    # --- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.params
        torch.set_num_threads(1)
        try:
            ckpt = load_checkpoint(p.checkpoint or None)
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"cannot load world-model checkpoint {p.checkpoint!r}: {e}")
            return TransitionCallbackReturn.FAILURE
        self._learner = OnlineLearner(ckpt.world_model, lr=p.learning_rate, buffer_size=p.buffer_size,
                                      batch_size=p.batch_size, grad_clip=p.grad_clip,
                                      dp_noise_multiplier=p.dp_noise_multiplier, dp_clip_norm=p.dp_clip_norm,
                                      dp_delta=p.dp_delta, dp_epsilon_budget=p.epsilon_budget,
                                      trainable=p.learn_trainable)
        if p.state_dir:
            os.makedirs(p.state_dir, exist_ok=True)
            restored = self._learner.load_latest(p.state_dir)
            self._sequence = self._read_sequence()
            if restored:
                self._sequence = max(self._sequence, int(restored.get("sequence", 0)))
                self.get_logger().info(f"resumed from {restored['path']} (sequence {self._sequence}, "
                                       f"skipped corrupt: {restored.get('skipped_corrupt')})")
                self.diag.set("resumed_from", os.path.basename(restored["path"]))
                if restored.get("skipped_corrupt"):
                    self.diag.count("corrupt_checkpoints_skipped", len(restored["skipped_corrupt"]))
            ledger = self._read_ledger()
            if ledger:
                self._learner.restore_dp_ledger(ledger)
        if self._learner.dp_enabled:
            self.get_logger().info(f"record-level DP-SGD on: z={p.dp_noise_multiplier:g}, C={p.dp_clip_norm:g}, "
                                   f"epsilon {self._learner.epsilon:.3g} spent of "
                                   f"{p.epsilon_budget:g} (0 = no budget) at delta {p.dp_delta:g}")
        self._pubs["state"] = self.create_lifecycle_publisher(WorldState, "world_state", state_qos())
        self._pubs["delta"] = self.create_lifecycle_publisher(ModelDelta, "model_delta", state_qos())
        self.create_subscription(Observation, "observation", self._on_observation, state_qos())
        self.create_subscription(Odometry, "odom", self._on_odom, state_qos(50))
        cmd_type = TwistStamped if p.twist_stamped else Twist
        self.create_subscription(cmd_type, "cmd_vel", self._on_cmd, state_qos(50))
        self.create_subscription(Bool, "contacts", self._on_contact, state_qos(50))
        self.create_subscription(ModelUpdate, "model_update", self._on_model_update, model_qos(),
                                 callback_group=MutuallyExclusiveCallbackGroup())
        if p.delta_period > 0:
            self.create_timer(p.delta_period, self._publish_delta)
        if p.state_dir:
            self.create_timer(p.checkpoint_period, self._checkpoint)
        self.diag.level_from(self._level)
        self.watch_clock(self._reset_time_state)
        self.diag.set("model_version", self._learner.base_version)
        self.get_logger().info(f"world model v{self._learner.base_version}, "
                               f"{ckpt.world_model.num_parameters()} parameters")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.stop_workers()  # the learner ends before the checkpoint
        if self.params.state_dir:
            self._checkpoint()
        return super().on_deactivate(state)

    def _level(self):
        if self._learner is None:
            return ERROR, "no model"
        if self._learner.budget_exhausted:
            return WARN, (f"privacy budget spent (epsilon {self._learner.epsilon:.3g} of "
                          f"{self.params.epsilon_budget:g}): learning stopped, no more deltas")
        c = self.diag.counters
        if c.get("dropped_misaligned", 0) > c.get("published", 0):
            return WARN, "most observations cannot be aligned with odometry"
        return OK, f"v{self._learner.base_version}, surprise {self._surprise:.4f}"

    # --- inputs -----------------------------------------------------------------------------
    def _reset_time_state(self) -> None:
        """After a backward clock jump: every buffered sample is from the old timeline."""
        self._odom, self._cmd, self._contacts = _Series(), _Series(), _Series()
        self._ticks.clear()
        self._predictions.clear()

    def _on_odom(self, msg: Odometry) -> None:
        now = self._now()
        t = _t(msg.header.stamp)
        if self.future_stamp(t, now, "odom"):
            return
        if msg.header.frame_id != self.params.odom_frame:
            self.drop("odom_frame", f"odometry in frame '{msg.header.frame_id}', not '{self.params.odom_frame}'")
            return
        pp, tw = msg.pose.pose, msg.twist.twist
        q = pp.orientation
        qn = q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w
        yaw = _yaw(q)
        v = np.array([pp.position.x, pp.position.y, math.cos(yaw), math.sin(yaw), tw.linear.x, tw.angular.z],
                     np.float32)
        if not np.all(np.isfinite(v)) or not math.isfinite(qn):
            self.drop("nan_odom")
            return
        if abs(qn - 1.0) > 0.01 or max(abs(pp.position.x), abs(pp.position.y)) > 1e4 \
                or max(abs(tw.linear.x), abs(tw.angular.z)) > 100.0:
            self.drop("absurd_odom", f"position ({pp.position.x:.3g}, {pp.position.y:.3g}), |q|^2 {qn:.3g}, "
                                     f"twist ({tw.linear.x:.3g}, {tw.angular.z:.3g})")
            return
        if self._odom.t and t == self._odom.t[-1]:
            self.drop("duplicate_odom", f"stamp {t:.3f} s seen before")
            return
        if not self._odom.add(t, v):
            self.drop("out_of_order_odom", f"stamp {t:.3f} s before the newest {self._odom.t[-1]:.3f} s")

    def _on_cmd(self, msg) -> None:
        tw = msg.twist if isinstance(msg, TwistStamped) else msg
        a = np.array([tw.linear.x, tw.angular.z], np.float32)
        if not np.all(np.isfinite(a)):
            self.drop("nan_cmd")
            return
        if np.max(np.abs(a)) > 100.0:
            self.drop("absurd_cmd", f"({a[0]:.3g}, {a[1]:.3g})")
            return
        # Twist has no stamp: the command is in force from the moment it is received (node clock)
        now = self._now()
        t = _t(msg.header.stamp) if isinstance(msg, TwistStamped) else now
        if self.future_stamp(t, now, "cmd_vel"):
            return
        if isinstance(msg, TwistStamped) and self._cmd.t and t == self._cmd.t[-1]:
            self.drop("duplicate_cmd")
            return
        if not self._cmd.add(t, a):
            self.drop("out_of_order_cmd")

    def _on_contact(self, msg: Bool) -> None:
        # std_msgs/Bool carries no stamp and no size: nothing can be malformed; contacts are stamped on receipt
        now = self._now()
        if msg.data:
            self._contacts.add(now, True)

    def _now(self) -> float:
        return self.checked_now()

    # --- the tick ---------------------------------------------------------------------------
    def _on_observation(self, msg: Observation) -> None:
        t_in = time.perf_counter()
        p = self.params
        learner = self._learner
        if learner is None or not self._pubs["state"].is_activated:
            self.ignore("inactive")
            return
        t, now = _t(msg.header.stamp), self._now()
        if self.future_stamp(t, now, "observation"):
            return
        if p.max_input_age > 0 and now - t > p.max_input_age:
            self.drop("stale", f"observation {now - t:.3f} s old")
            return
        emb = np.asarray(msg.embedding, np.float32)
        snap = learner.snapshot
        if emb.shape != (snap.config.embed_dim,):
            self.drop("bad_observation", f"embedding shape {emb.shape}, expected ({snap.config.embed_dim},)")
            return
        if not (np.all(np.isfinite(emb)) and math.isfinite(msg.quality)):
            self.drop("nan_observation")
            return
        if float(np.max(np.abs(emb))) > 1e3:  # the encoder's output is layer-normalised (entries ~N(0, 1))
            self.drop("absurd_observation", f"|embedding| up to {float(np.max(np.abs(emb))):.3g}")
            return
        last = self._ticks[-1][0] if self._ticks else None
        if last is not None and t <= last:
            self.drop("duplicate_observation" if t == last else "out_of_order_observation",
                      f"stamp {t:.3f} s, the last tick was {last:.3f} s")
            return
        proprio, gap = self._odom.nearest(t)
        if proprio is None or gap > p.align_tolerance:
            self.drop("misaligned", f"no odometry within {p.align_tolerance * 1e3:.0f} ms (gap {gap * 1e3:.0f} ms)")
            return
        action = self._cmd.at_or_before(t)
        action = np.zeros(2, np.float32) if action is None else action
        t0 = time.perf_counter()
        z = snap.encode(emb[None], proprio[None])
        horizon = p.horizon
        zs, sig = snap.rollout(z, np.repeat(action[None, None, :], horizon, axis=1))
        pose = snap.pose(z)[0]
        risk = float(snap.collision(zs[:, 0])[0]) if horizon else 0.0
        self._update_surprise(t, z[0])
        self._predictions.append((t + p.model_dt, zs[0, 0].copy()))
        compute = time.perf_counter() - t0

        out = WorldState()
        out.header.stamp = msg.header.stamp
        out.header.frame_id = p.odom_frame
        out.model_version = learner.base_version
        out.latent = z[0].astype(np.float32)
        out.predicted = zs[0].reshape(-1).astype(np.float32)
        out.horizon, out.latent_dim, out.step_dt = horizon, z.shape[1], p.model_dt
        out.pose_x, out.pose_y, out.pose_yaw = (float(v) for v in pose)
        out.collision_risk = risk
        out.uncertainty = float(sig[0, 0])
        out.surprise = float(self._surprise)
        # tick_ms: the model (encode + prediction + heads); callback_ms: the whole callback up to the
        # publish (checks, odometry alignment, model, message): the node's share of the loop latency.
        # Both as mean / p99 over the last 300 ticks.
        self.diag.sample("callback_ms", (time.perf_counter() - t_in) * 1e3)
        self._pubs["state"].publish(out)
        self.diag.count("published")
        self.diag.sample("tick_ms", compute * 1e3)
        self._add_transition(t, emb, proprio, action)

    def _update_surprise(self, t: float, z: np.ndarray) -> None:
        tol = self.params.align_tolerance
        best = None
        while self._predictions and self._predictions[0][0] < t - tol:
            self._predictions.popleft()
        for t_target, z_pred in self._predictions:
            if abs(t_target - t) <= tol and (best is None or abs(t_target - t) < abs(best[0] - t)):
                best = (t_target, z_pred)
        if best is not None:
            self._surprise = float(np.mean((z - best[1]) ** 2))
            self.diag.set("surprise", round(self._surprise, 5))

    def _add_transition(self, t, emb, proprio, action) -> None:
        dt, tol = self.params.model_dt, self.params.align_tolerance
        prev = None
        for tick in self._ticks:
            if abs(t - tick[0] - dt) <= tol and (prev is None or abs(t - tick[0] - dt) < abs(t - prev[0] - dt)):
                prev = tick
        if prev is not None:
            collided = any(prev[0] < tc <= t for tc in self._contacts.t)
            self._learner.add(Transition(prev[1], prev[2], prev[3], emb, proprio, collided))
        self._ticks.append((t, emb, proprio, action))

    # --- learning, deltas, checkpoints, updates ---------------------------------------------
    def _learn_loop(self) -> None:
        # Learning is background work: it runs only in CPU time the ticks (executor thread) and the
        # other nodes leave idle; the achieved rate is in diagnostics ("learning" -> steps).
        self.diag.set("learning_thread_policy", deprioritise_current_thread())
        next_t = time.monotonic()
        while not self._stop.is_set():
            rate = self.params.learning_steps_per_s
            if not self.params.learning_enabled or rate <= 0:
                self._stop.wait(0.2)
                next_t = time.monotonic()
                continue
            next_t += 1.0 / rate
            try:
                loss = self._learner.train_step()
            except Exception as e:  # noqa: BLE001 - a failing step must not end learning
                self.diag.count("learning_errors")
                self.get_logger().error(f"learning step failed: {e!r}", throttle_duration_sec=10.0)
                loss = None
            if loss is not None:
                self.diag.set("train_loss", round(loss, 5))
            st = self._learner.stats()
            self.diag.set("learning", json.dumps({k: st[k] for k in sorted(st)}))
            if self._learner.dp_enabled:
                self.diag.set("epsilon_spent", round(self._learner.epsilon, 4))
                self.diag.set("epsilon_budget", self.params.epsilon_budget)
                self.diag.set("budget_exhausted", self._learner.budget_exhausted)
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _publish_delta(self) -> None:
        learner, pub = self._learner, self._pubs.get("delta")
        if learner is None or pub is None or not pub.is_activated:
            return
        if self._final_delta_sent:
            self.diag.count("deltas_withheld_budget")
            return
        stats = learner.delta_stats()
        exhausted = learner.budget_exhausted
        if stats["sample_count"] == 0 and not exhausted:
            return
        delta = learner.delta_since_base()
        if not np.all(np.isfinite(delta)):
            self.diag.count("nonfinite_delta_skipped")
            return
        self._sequence += 1
        self._write_sequence()
        epsilon = learner.epsilon
        if learner.dp_enabled:
            self._write_ledger()  # before the delta leaves: a restart must not forget this release
        msg = ModelDelta()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.model_id = "world_model"
        msg.base_version = stats["base_version"]
        msg.sequence = self._sequence
        msg.sample_count = int(stats["sample_count"])
        msg.local_loss = float(stats["local_loss"])
        msg.codec = codecs.codec_id(DELTA_CODEC)
        msg.payload = codecs.encode(delta, DELTA_CODEC)
        msg.l2_norm = float(np.linalg.norm(delta))
        msg.epsilon_spent = float(epsilon)
        msg.dp_delta = float(self.params.dp_delta)
        msg.epsilon_budget = float(self.params.epsilon_budget)
        msg.budget_exhausted = bool(exhausted)
        pub.publish(msg)
        self.diag.count("deltas_published")
        if exhausted:
            self._final_delta_sent = True
            self.get_logger().warning(f"privacy budget spent: record-level epsilon {epsilon:.4g} of "
                                      f"{self.params.epsilon_budget:g} (delta {self.params.dp_delta:g}); "
                                      f"delta {self._sequence} is this robot's last, learning stopped")
        self.diag.set("delta_sequence", self._sequence)

    # The delta sequence number is persisted on its own (atomically, before the delta goes out), so a
    # restart from an older weights checkpoint never reuses a sequence number the fleet has seen.
    def _read_sequence(self) -> int:
        try:
            with open(os.path.join(self.params.state_dir, "delta_sequence")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_sequence(self) -> None:
        if self.params.state_dir:
            atomic_write(os.path.join(self.params.state_dir, "delta_sequence"), str(self._sequence).encode())

    def _read_ledger(self) -> dict | None:
        try:
            with open(os.path.join(self.params.state_dir, "privacy_ledger.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _write_ledger(self) -> None:
        if self.params.state_dir:
            state = self._learner.dp_state()["ledger"]
            atomic_write(os.path.join(self.params.state_dir, "privacy_ledger.json"), json.dumps(state).encode())

    def _checkpoint(self) -> None:
        if self._learner is None:
            return
        try:
            path = self._learner.save_checkpoint(self.params.state_dir, extra={"sequence": self._sequence})
            self.diag.set("last_checkpoint", os.path.basename(path))
        except OSError as e:
            self.diag.count("checkpoint_errors")
            self.get_logger().error(f"checkpoint failed: {e}")

    def _on_model_update(self, msg: ModelUpdate) -> None:
        learner = self._learner
        if learner is None:
            self.ignore("inactive")
            return
        if not self.accept_model_update(msg, "world_model", learner.base_version):
            return
        try:
            with learner.lock:  # the copy of the running model that takes a flat vector: not mid-step
                payload = update_to_world_model_payload(msg.codec, bytes(msg.payload), learner.model,
                                                        int(msg.version))
            learner.apply_global(payload, int(msg.version), expected_sha256=sha256_hex(payload))
        except (PayloadError, ValueError, KeyError, RuntimeError) as e:
            self.drop("model_update_invalid", f"world-model update v{msg.version}: {e}; the current model is kept",
                      level="error")
            return
        self._predictions.clear()
        self.diag.count("model_update_applied")
        self.diag.set("model_version", int(msg.version))
        self.get_logger().info(f"world model replaced by global v{msg.version}")


def main(args=None) -> int:
    return run(WorldModelNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
