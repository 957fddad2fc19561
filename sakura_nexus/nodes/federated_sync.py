"""federated_sync_node: the robot's link to the fleet. Model deltas in, durable spool, Flower SuperNode,
global models out. Thin adapter over :mod:`sakura_nexus.federated` (see docs/federated.md).

- ``model_delta`` (reliable): the cumulative weight change world_model_node publishes every
  ``delta_period``. :class:`~sakura_nexus.federated.robot.uplink.DeltaUplink` turns it into an increment,
  L2-clips it (``clip_norm``), adds local Gaussian noise if ``local_noise_std`` > 0 (accounted),
  encodes it with ``codec`` through error feedback (residual kept on the robot, persisted in the spool
  directory) and appends it durably to the spool under ``(robot_id, sequence)``; a sequence seen
  before is refused and counted (``duplicates``).
- A Flower SuperNode for this robot (``start_supernode``) is started, restarted when it dies and
  stopped with the node; it carries spooled payloads to the ``superlink`` and stores new global models
  in the spool inbox. Nothing else leaves the robot: no images, no embeddings, only codec payloads
  of weight deltas (``egress_audit_dir`` keeps a copy of every upstream message for audit).
- Every ``poll_period``: a newer global model in the inbox is checked like every model update (the
  aggregator's Ed25519 signature by a key in ``trusted_keys``, sha256, newer version:
  :mod:`sakura_nexus.federated.common.signing`), its flat vector checked against the ``checkpoint``'s
  parameter count, and published unchanged, with the aggregator's signature, on ``model_update``
  (codec ``flat-vector-v1``, transient-local), so world_model_node and policy_node verify and
  hot-swap it themselves; ``sync_status`` reports the link.
"""

from __future__ import annotations

import atexit
import math
import os
import time

from rclpy.lifecycle import State, TransitionCallbackReturn

from sakura_nexus.federated.common.codecs import CodecError, decode
from sakura_nexus.federated.common.durable import check_robot_id
from sakura_nexus.federated.common.weights import FLAT_VECTOR
from sakura_nexus.federated.robot.spool import Spool
from sakura_nexus.federated.robot.supernode import SuperNodeSupervisor
from sakura_nexus.federated.robot.uplink import DeltaUplink
from sakura_nexus.msg import ModelDelta, ModelUpdate, SyncStatus
from sakura_nexus.params import FEDERATED_SYNC
from sakura_nexus.ros.node import ERROR, OK, WARN, NexusNode, run
from sakura_nexus.ros.qos import model_qos, state_qos

MODEL_ID = "world_model"
MAX_SEQUENCE_JUMP = 100_000  # deltas; at one per delta_period (>= 1 s) that is a day of lost deltas
MAX_DELTA_BYTES = 64 << 20  # a world-model delta is ~0.1-1 MB; anything this large is not one


class FederatedSyncNode(NexusNode):
    def __init__(self, **kwargs):
        super().__init__("federated_sync_node", FEDERATED_SYNC, **kwargs)
        self.robot_id = ""
        self.spool: Spool | None = None
        self.uplink: DeltaUplink | None = None
        self.supernode: SuperNodeSupervisor | None = None
        self._template = None  # world model whose parameters receive global vectors
        self._n_params: int | None = None
        self._published_version = -1  # newest inbox version looked at
        self._verified_version = -1   # newest version verified and published (the replay reference)
        self._last_error = ""
        self._error_kind = ""  # what clears it: "delta" (next spooled delta), "link" (next exchange),
        self._error_time = 0.0  # "model" (next published model); "" = stays
        self._base_stats: dict = {}
        # record-level DP of the robot's learner, from its latest model_delta
        self._record_eps, self._eps_budget, self._budget_exhausted = 0.0, 0.0, False
        self._budget_msg = ""
        self._pubs: dict = {}
        self._timer = None
        self.params.on_change(self._on_params)
        atexit.register(self._stop_supernode)

    def _on_params(self, changed: dict) -> None:
        if self.uplink is None:
            return
        if "codec" in changed:
            self.uplink.set_codec(changed["codec"])
        if "clip_norm" in changed or "local_noise_std" in changed:
            self.uplink.set_privacy(self.params.clip_norm, self.params.local_noise_std)
        if "poll_period" in changed and self._timer is not None:
            self._timer.cancel()
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(changed["poll_period"], self._poll)

    def _error(self, msg: str, kind: str = "", log: bool = True) -> None:
        self._last_error, self._error_kind, self._error_time = msg, kind, time.time()
        if log:
            self.get_logger().error(msg, throttle_duration_sec=5.0)

    def _clear_error(self, kind: str) -> None:
        if self._last_error and self._error_kind == kind:
            self._last_error, self._error_kind = "", ""

    # --- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.params
        self.robot_id = p.robot_id or self.get_namespace().strip("/").replace("/", "_") or "robot"
        try:
            check_robot_id(self.robot_id)
        except ValueError as e:
            self.get_logger().error(str(e))
            return TransitionCallbackReturn.FAILURE
        spool_dir = p.spool_dir or os.path.join(
            os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros"),
            "sakura_nexus", "spool", self.robot_id)
        try:
            import torch

            from sakura_nexus.federated.common.weights import load_world_model

            torch.set_num_threads(1)
            self._template = load_world_model(p.checkpoint or None)
            self._n_params = self._template.num_parameters()
            # only global models newer than the checkpoint (policy_node would otherwise swap in an older one)
            self._published_version = int(self._template.version)
            self._verified_version = self._published_version
        except Exception as e:  # noqa: BLE001 - deltas are still spooled; updates cannot be converted
            self._template, self._n_params = None, None
            self._error(f"cannot load world-model checkpoint {p.checkpoint or 'shipped'!r}: {e}; "
                        "global models will not be published")
        try:
            self.spool = Spool(spool_dir, p.spool_max_bytes, p.spool_policy)
            self.uplink = DeltaUplink(self.spool, self.robot_id, codec=p.codec, clip_norm=p.clip_norm,
                                      noise_multiplier=p.local_noise_std, expected_size=self._n_params,
                                      model_id=MODEL_ID)
        except (OSError, ValueError, RuntimeError) as e:
            self.get_logger().error(f"cannot open spool {spool_dir}: {e}")
            return TransitionCallbackReturn.FAILURE
        self._base_stats = self.spool.stats()
        self.get_logger().info(f"robot {self.robot_id}: spool {spool_dir} ({self._base_stats['pending']} pending), "
                               f"uplink {self.uplink.recovery}, codec {p.codec}, "
                               f"model {self._n_params} parameters")
        self.diag.set("robot_id", self.robot_id)
        self.diag.set("spool_dir", spool_dir)
        self.diag.set("uplink_recovery", self.uplink.recovery)
        if p.start_supernode:
            extra = {"egress-audit-dir": os.path.abspath(p.egress_audit_dir)} if p.egress_audit_dir else {}
            self.supernode = SuperNodeSupervisor(p.superlink, spool_dir, self.robot_id, port=p.supernode_port,
                                                 root_certificates=p.root_certificates or None,
                                                 auth_private_key=p.auth_private_key or None,
                                                 extra_node_config=extra)
        self._pubs["update"] = self.create_lifecycle_publisher(ModelUpdate, "model_update", model_qos())
        self._pubs["status"] = self.create_lifecycle_publisher(SyncStatus, "sync_status", state_qos())
        self.create_subscription(ModelDelta, "model_delta", self._on_delta, state_qos(10))
        self._timer = self.create_timer(p.poll_period, self._poll)
        self.diag.level_from(self._level)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        ret = super().on_activate(state)
        if self.supernode is not None:
            try:
                self.supernode.start()
                self.get_logger().info(f"SuperNode for {self.robot_id} -> {self.params.superlink} "
                                       f"(pid {self.supernode.proc.pid}, log {self.supernode.log_path})")
                if self.supernode.stale_killed:
                    self.diag.count("supernode_stale_killed", self.supernode.stale_killed)
            except OSError as e:
                self._error(f"cannot start the SuperNode: {e}", "link")
        self._poll()
        return ret

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_supernode()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._stop_supernode()
        if self.uplink is not None:
            self.uplink.close()  # releases the spool for the next configure
        self.uplink = self.spool = self.supernode = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_supernode()
        return super().on_shutdown(state)

    def _stop_supernode(self) -> None:
        if self.supernode is not None and not self.supernode._stopped:
            self.supernode.stop()

    def destroy_node(self):
        self._stop_supernode()
        return super().destroy_node()

    def _level(self):
        if self.spool is None:
            return ERROR, "no spool"
        if self._template is None:
            return ERROR, "no world-model checkpoint: global models cannot be applied"
        if self.supernode is not None and not self.supernode.running:
            return WARN, f"SuperNode not running (last exit {self.supernode.last_exit})"
        if self._last_error or self._budget_msg:
            return WARN, (self._last_error or self._budget_msg)[:200]
        return OK, f"v{max(self._published_version, 0)}, {self.diag.counters.get('deltas_spooled', 0)} spooled"

    # --- uplink -----------------------------------------------------------------------------
    def _on_delta(self, msg: ModelDelta) -> None:
        if self.uplink is None or not self._pubs["status"].is_activated:
            self.ignore("inactive")
            return
        self.diag.count("deltas_received")
        if msg.model_id != MODEL_ID:
            self.drop("model_id", f"model_id {msg.model_id!r} is not synced")
            return
        if msg.sequence == 0 or len(msg.payload) > MAX_DELTA_BYTES:
            self.drop("bad_delta", f"sequence {msg.sequence} (starts at 1), {len(msg.payload)} B payload "
                                   f"(at most {MAX_DELTA_BYTES})")
            return
        if msg.sequence > self.uplink.state.seq + MAX_SEQUENCE_JUMP:
            # a robot's sequence grows by one per delta (a kill -9 can skip one): a jump this far would make
            # every later, genuine delta look like a replay
            self.drop("sequence_jump", f"sequence {msg.sequence} after {self.uplink.state.seq}")
            return
        if math.isnan(msg.epsilon_spent) or not (math.isfinite(msg.epsilon_budget) and msg.epsilon_budget >= 0) \
                or msg.epsilon_spent < 0 or not (math.isfinite(msg.dp_delta) and 0 <= msg.dp_delta < 1):
            self.drop("bad_delta_privacy", f"epsilon {msg.epsilon_spent} of budget {msg.epsilon_budget}, "
                                           f"delta {msg.dp_delta}")
            return
        self._record_eps, self._eps_budget = float(msg.epsilon_spent), float(msg.epsilon_budget)
        if self._budget_exhausted:
            self.drop("privacy_budget_spent", f"delta {msg.sequence} withheld: the privacy budget is spent")
            return
        if msg.epsilon_budget > 0 and not msg.epsilon_spent <= msg.epsilon_budget:
            self.drop("privacy_budget_exceeded", f"delta {msg.sequence}: record-level epsilon "
                      f"{msg.epsilon_spent:.4g} above the budget {msg.epsilon_budget:g}; not sent", level="error")
            self._stop_contributing(msg)
            return
        t0 = time.perf_counter()
        try:
            res = self.uplink.submit(msg.sequence, msg.base_version, bytes(msg.payload),
                                     sample_count=msg.sample_count, local_loss=msg.local_loss)
        except OSError as e:  # disk trouble writing the robot state: keep the node up, report it
            self.diag.count("uplink_errors")
            self._outcome("uplink_error")
            self._error(f"uplink state write failed: {e}", "delta")
            return
        if res.status == "duplicate":
            self.diag.count("duplicates")
            self.ignore()  # a replay after a restart: already spooled, nothing lost
            self.get_logger().warning(f"delta sequence {msg.sequence} refused as duplicate ({res.reason})",
                                      throttle_duration_sec=5.0)
            return
        if res.status == "unchanged":
            self.diag.count("deltas_unchanged")
            self.ignore()
            return
        if res.status != "spooled":
            reason = res.reason.split(":", 1)[0]
            self.drop(reason, res.reason)
            self._error(f"delta {msg.sequence} dropped: {res.reason}", "delta", log=False)
            return
        self.diag.count("deltas_spooled")
        self._clear_error("delta")
        self.diag.count("bytes_in", res.bytes_in)
        self.diag.count("bytes_spooled", res.bytes_out)
        if res.clipped:
            self.diag.count("clipped")
        self.diag.set("last_increment_norm", round(res.increment_norm, 6))
        self.diag.set("residual_norm", round(self.uplink.residual_norm, 6))
        self.diag.set("spool_ms", round((time.perf_counter() - t0) * 1e3, 2))
        # after the append returned (durable): the line tests and operators rely on
        self.get_logger().info(f"spooled {self.robot_id} seq={msg.sequence} base=v{msg.base_version} "
                               f"{res.bytes_in}->{res.bytes_out} B norm={res.increment_norm:.4g}")
        if msg.budget_exhausted:
            self._stop_contributing(msg)

    def _stop_contributing(self, msg: ModelDelta) -> None:
        """The robot's record-level privacy budget is spent: no further delta leaves it (sticky)."""
        self._budget_exhausted = True
        self.diag.set("budget_exhausted", True)
        self._budget_msg = (f"privacy budget spent: record-level epsilon {msg.epsilon_spent:.4g} of "
                            f"{msg.epsilon_budget:g} (delta {msg.dp_delta:g}); delta {msg.sequence} was the last, "
                            f"this robot sends no more")
        self._error(self._budget_msg)

    # --- downlink + status ------------------------------------------------------------------
    def _poll(self) -> None:
        if self.spool is None or not self._pubs["status"].is_activated:
            return
        if self.supernode is not None:
            st = self.supernode.poll()
            if st == "restarted":
                self.diag.count("supernode_restarts")
                self._error(f"SuperNode exited (code {self.supernode.last_exit}); restarted", "link", log=False)
                self.get_logger().warning(self._last_error)
        try:
            self._publish_global()
        except OSError as e:
            self._error(f"inbox read failed: {e}", "model")
        self._publish_status()

    def _publish_global(self) -> None:
        v = self.spool.inbox.latest_version(MODEL_ID)
        if v <= self._published_version or self._template is None:
            return
        got = self.spool.inbox.latest(MODEL_ID)
        if got is None:
            return
        version, payload, meta = got
        self._published_version = max(self._published_version, version)  # a bad version is not retried
        from sakura_nexus.models.serialization import sha256_hex

        msg = ModelUpdate(model_id=MODEL_ID, version=int(version), codec=FLAT_VECTOR, payload=payload,
                          sha256=sha256_hex(payload), key_id=str(meta.get("key_id", "")))
        try:
            msg.signature = bytes.fromhex(str(meta.get("signature", "")))
        except ValueError:
            msg.signature = b""
        if not self.accept_model_update(msg, MODEL_ID, self._verified_version):
            self.diag.count("model_update_errors")
            self._error(f"global model v{version} refused (see dropped_model_update_* in diagnostics)", "model",
                        log=False)
            return
        try:
            vec = decode(payload)
            if vec.size != self._n_params:
                raise ValueError(f"{vec.size} values, the world model has {self._n_params} parameters")
        except (CodecError, ValueError) as e:
            self.diag.count("model_update_errors")
            self._error(f"global model v{version} not usable: {e}", "model")
            return
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pubs["update"].publish(msg)
        self._verified_version = int(version)
        self.diag.count("model_updates_published")
        self._clear_error("model")
        self.diag.set("global_version", int(version))
        self.get_logger().info(f"published global world model v{version} ({len(payload)} B, signed by "
                               f"{msg.key_id})")

    def _link_state(self, last_sync: dict | None) -> int:
        age = time.time() - float(last_sync["time"]) if last_sync else float("inf")
        fresh = age < self.params.link_timeout
        sn = self.supernode
        if sn is None:
            if fresh:
                return SyncStatus.LINK_ONLINE
            return SyncStatus.LINK_DISABLED if last_sync is None else SyncStatus.LINK_OFFLINE
        if not sn.running:
            return SyncStatus.LINK_OFFLINE
        if last_sync is None or float(last_sync["time"]) < sn.started_at:
            return SyncStatus.LINK_CONNECTING
        return SyncStatus.LINK_ONLINE if fresh else SyncStatus.LINK_OFFLINE

    def _publish_status(self) -> None:
        st = self.spool.stats()
        last = self.spool.last_sync()
        if last and float(last["time"]) > self._error_time:
            self._clear_error("link")
        base = self._base_stats
        msg = SyncStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.link_state = self._link_state(last)
        msg.pending_deltas = int(st.get("pending", 0))
        msg.spool_bytes = int(st.get("bytes", 0))
        msg.bytes_sent = max(0, int(st.get("bytes_sent", 0)) - int(base.get("bytes_sent", 0)))
        msg.bytes_received = max(0, int(st.get("bytes_received", 0)) - int(base.get("bytes_received", 0)))
        msg.deltas_acked = max(0, int(st.get("acked", 0)) - int(base.get("acked", 0)))
        msg.global_version = max(0, self.spool.inbox.latest_version(MODEL_ID))
        msg.epsilon_spent = float(self.uplink.epsilon) if self.uplink else 0.0
        msg.record_epsilon_spent = self._record_eps
        msg.epsilon_budget = self._eps_budget
        msg.budget_exhausted = self._budget_exhausted
        msg.last_error = self._last_error or self._budget_msg  # the budget reason stays once nothing newer
        self._pubs["status"].publish(msg)
        for k in ("pending", "bytes", "acked", "duplicates", "merged", "dropped", "corrupt", "syncs",
                  "bytes_sent", "bytes_received"):
            self.diag.set(f"spool_{k}", int(st.get(k, 0)))
        self.diag.set("link_state", int(msg.link_state))
        self.diag.set("epsilon_spent", round(msg.epsilon_spent, 4))
        self.diag.set("record_epsilon_spent", round(self._record_eps, 4))
        self.diag.set("epsilon_budget", self._eps_budget)
        if self.supernode is not None:
            self.diag.set("supernode_pid", self.supernode.proc.pid if self.supernode.running else 0)


def main(args=None) -> int:
    from sakura_nexus.priority import deprioritise_process

    # robot-side sync never costs a control tick: this process, its SuperNode, SuperExec and every
    # ClientApp run only in CPU time the robot stack leaves idle (SCHED_IDLE, inherited)
    deprioritise_process()
    return run(FederatedSyncNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
