"""MuJoCo factory cell: diff-drive robot with real wheel joints, forward RGB camera, contacts.

Physics: the robot body has a free joint; two hinge wheels and two frictionless ball casters touch
the floor. A wheel collides as a sphere of the wheel radius (one tyre contact point, no scrubbing
across the tyre width; drawn as a cylinder), and traction comes from the floor friction. Each wheel
has a MuJoCo velocity actuator (a torque-limited proportional wheel-speed loop, integrated implicitly),
which is the low-level controller: ``step(v, w)`` converts the body command to wheel speeds by
diff-drive inverse kinematics.

Collision bookkeeping uses contact bit masks: floor/wheels/casters are in class 1 and the chassis,
walls and obstacles in class 2, so the only contacts a class-2 geom can have are chassis-vs-environment
contacts (static geoms never collide with each other). ``in_collision`` is "the chassis touches a wall
or obstacle now"; ``StepResult.collided`` is "it did at any physics step of this ``step`` call".
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ.get("MUJOCO_GL") == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import mujoco
import numpy as np

from sakura_nexus.geometry import quaternion_from_yaw, wrap_angle, yaw_from_quaternion

from .layout import (
    CAMERA_NAME,
    KIND_RGBA,
    WHEEL_JOINTS,
    CellConfig,
    Layout,
    StepResult,
    generate_layout,
    sample_free_pose,
)

_MAX_OFFSCREEN = (1280, 960)


def _f(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in (v if hasattr(v, "__len__") else [v]))


def build_mjcf(cfg: CellConfig, layout: Layout, start=(0.0, 0.0, 0.0),
               offscreen: tuple[int, int] = (640, 480)) -> str:
    """MJCF text of the cell (robot at ``start``)."""
    rb, ap = cfg.robot, layout.appearance
    half, t, h = cfg.size / 2, cfg.wall_thickness, cfg.wall_height
    r = rb.wheel_radius
    x0, y0, yaw0 = start
    zc = (rb.chassis_bottom + rb.chassis_top) / 2 - r   # chassis centre relative to the wheel axis
    hz = (rb.chassis_top - rb.chassis_bottom) / 2
    caster_r = 0.02
    cz = -r + caster_r                                     # caster centre relative to the wheel axis
    th = rb.camera_pitch
    cam_xy = f"0 -1 0 {math.sin(th):.6f} 0 {math.cos(th):.6f}"  # look along +x, tilted down by th
    ctrl_max = 1.3 * (rb.max_v + rb.max_w * rb.wheel_separation / 2) / r
    floor_rep = 1.0 / (2 * ap.floor_tile)
    wall_rep = 1.0 / (2 * ap.wall_panel)
    walls = []
    for i, (px, py, sx, sy) in enumerate([
        (half + t / 2, 0, t / 2, half + t), (-half - t / 2, 0, t / 2, half + t),
        (0, half + t / 2, half + t, t / 2), (0, -half - t / 2, half + t, t / 2),
    ]):
        walls.append(f'<geom name="wall_{i}" type="box" pos="{_f((px, py, h / 2))}" size="{_f((sx, sy, h / 2))}" '
                     f'material="wall" contype="2" conaffinity="2"/>')
    obs = []
    if cfg.mover is not None:
        mv = cfg.mover
        obs.append(f'<body name="mover" mocap="true" pos="{_f((100.0, 100.0, mv.sz / 2))}">'
                   f'<geom name="mover" type="box" size="{_f((mv.sx / 2, mv.sy / 2, mv.sz / 2))}" '
                   f'material="{mv.kind}" contype="2" conaffinity="2"/></body>')
    for i, ob in enumerate(layout.obstacles):
        obs.append(f'<geom name="obstacle_{i}" type="box" pos="{_f((ob.x, ob.y, ob.sz / 2))}" '
                   f'size="{_f((ob.sx / 2, ob.sy / 2, ob.sz / 2))}" euler="0 0 {ob.yaw:.6f}" '
                   f'material="{ob.kind}" contype="2" conaffinity="2"/>')
        if ob.kind == "machine":  # dark control-panel band, visual only, flush with the body
            obs.append(f'<geom name="obstacle_{i}_panel" type="box" pos="{_f((ob.x, ob.y, ob.sz * 0.8))}" '
                       f'size="{_f((ob.sx / 2 + 0.002, ob.sy / 2 + 0.002, ob.sz * 0.06))}" '
                       f'euler="0 0 {ob.yaw:.6f}" rgba="0.15 0.15 0.17 1" contype="0" conaffinity="0" group="1"/>')
        elif ob.kind == "pallet":  # three darker slats on top, visual only
            c, s = math.cos(ob.yaw), math.sin(ob.yaw)
            for k in (-1, 0, 1):
                lx = k * (ob.sx / 2 - 0.1)
                px, py = ob.x + c * lx, ob.y + s * lx
                obs.append(f'<geom type="box" pos="{_f((px, py, ob.sz + 0.001))}" '
                           f'size="{_f((0.05, ob.sy / 2, 0.002))}" euler="0 0 {ob.yaw:.6f}" '
                           f'rgba="0.42 0.27 0.12 1" contype="0" conaffinity="0" group="1"/>')
    wheels = []
    for name, side in (("left", 1), ("right", -1)):
        wheels.append(f'''
      <body name="{name}_wheel" pos="0 {side * rb.wheel_separation / 2:.6f} 0">
        <joint name="{name}_wheel_joint" type="hinge" axis="0 1 0" armature="0.001" damping="0.001"/>
        <geom name="{name}_wheel" type="sphere" size="{r:.6f}" mass="{rb.wheel_mass}" group="4"
              contype="1" conaffinity="1" condim="3" friction="0.01 0.005 0.0001"/>
        <geom type="cylinder" size="{r:.6f} {rb.wheel_width / 2:.6f}" zaxis="0 1 0" material="tyre"
              contype="0" conaffinity="0" mass="0" group="1"/>
        <geom type="box" size="0.008 {rb.wheel_width / 2 + 0.001:.6f} {r * 0.7:.6f}" rgba="0.8 0.8 0.8 1"
              contype="0" conaffinity="0" mass="0" group="1"/>
      </body>''')
    vis = "1" if cfg.show_goal else "0"
    return f'''<mujoco model="factory_cell">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{cfg.timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <statistic extent="{cfg.size:.3f}" center="0 0 0.5"/>
  <visual>
    <global offwidth="{offscreen[0]}" offheight="{offscreen[1]}" fovy="{rb.camera_fovy}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="{_f(ap.ambient)}" diffuse="{_f(ap.headlight)}" specular="0 0 0"/>
    <map znear="0.004" zfar="20"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="{_f(ap.sky_rgb1)}" rgb2="{_f(ap.sky_rgb2)}"
             width="32" height="192"/>
    <texture name="floor_tex" type="2d" builtin="checker" rgb1="{_f(ap.floor_rgb1)}" rgb2="{_f(ap.floor_rgb2)}"
             mark="edge" markrgb="{_f(ap.floor_mark)}" width="128" height="128"/>
    <material name="floor" texture="floor_tex" texrepeat="{floor_rep:.6f} {floor_rep:.6f}" texuniform="true"
              specular="0.1" reflectance="0"/>
    <texture name="wall_tex" type="2d" builtin="checker" rgb1="{_f(ap.wall_rgb1)}" rgb2="{_f(ap.wall_rgb2)}"
             mark="edge" markrgb="0.35 0.35 0.35" width="64" height="64"/>
    <material name="wall" texture="wall_tex" texrepeat="{wall_rep:.6f} {1.0 / h:.6f}" texuniform="true"
              specular="0.05"/>
    <material name="pallet" rgba="{_f(KIND_RGBA["pallet"])}" specular="0.05"/>
    <material name="box" rgba="{_f(KIND_RGBA["box"])}" specular="0.2"/>
    <material name="machine" rgba="{_f(KIND_RGBA["machine"])}" specular="0.3"/>
    <material name="robot" rgba="0.85 0.35 0.1 1" specular="0.3"/>
    <material name="tyre" rgba="0.08 0.08 0.08 1"/>
  </asset>
  <worldbody>
    <light name="sun" directional="true" castshadow="false" pos="0 0 5" dir="{_f(ap.light_dir)}"
           diffuse="{_f(ap.light_diffuse)}" specular="0.1 0.1 0.1"/>
    <geom name="floor" type="plane" size="{half + t:.6f} {half + t:.6f} 0.1" material="floor"
          friction="{layout.floor_friction:.6f} 0.005 0.0001" contype="1" conaffinity="1" condim="3"/>
    {"".join(walls)}
    {"".join(obs)}
    <body name="goal" mocap="true" pos="0 0 0.002">
      <geom name="goal_marker" type="cylinder" size="0.2 0.001" rgba="0.1 0.9 0.2 0.6"
            contype="0" conaffinity="0" group="{3 if vis == "0" else 1}"/>
    </body>
    <body name="base_link" pos="{x0:.6f} {y0:.6f} {r:.6f}" euler="0 0 {yaw0:.6f}">
      <freejoint name="root"/>
      <geom name="chassis" type="box" pos="0 0 {zc:.6f}" size="{rb.length / 2} {rb.width / 2} {hz:.6f}"
            mass="{rb.mass}" material="robot" contype="2" conaffinity="2"/>
      <geom name="caster_front" type="sphere" size="{caster_r}" pos="{rb.length / 2 - 0.05:.6f} 0 {cz:.6f}"
            mass="0.1" condim="1" priority="1" friction="0 0 0" contype="1" conaffinity="1" rgba="0.3 0.3 0.3 1"/>
      <geom name="caster_rear" type="sphere" size="{caster_r}" pos="{-rb.length / 2 + 0.05:.6f} 0 {cz:.6f}"
            mass="0.1" condim="1" priority="1" friction="0 0 0" contype="1" conaffinity="1" rgba="0.3 0.3 0.3 1"/>
      <geom name="mast" type="box" pos="{rb.camera_pos[0] - 0.02:.6f} 0 {rb.camera_pos[2] - 0.02:.6f}"
            size="0.02 0.04 0.03" rgba="0.2 0.2 0.2 1" contype="0" conaffinity="0" mass="0" group="1"/>
      <camera name="{CAMERA_NAME}" pos="{_f(rb.camera_pos)}" xyaxes="{cam_xy}" fovy="{rb.camera_fovy}"/>
      {"".join(wheels)}
    </body>
  </worldbody>
  <actuator>
    <velocity name="left_motor" joint="left_wheel_joint" kv="{rb.wheel_kv}"
              forcerange="{-rb.wheel_torque} {rb.wheel_torque}" ctrlrange="{-ctrl_max:.4f} {ctrl_max:.4f}"/>
    <velocity name="right_motor" joint="right_wheel_joint" kv="{rb.wheel_kv}"
              forcerange="{-rb.wheel_torque} {rb.wheel_torque}" ctrlrange="{-ctrl_max:.4f} {ctrl_max:.4f}"/>
  </actuator>
</mujoco>
'''


class _Renderer:
    """One EGL/OSMesa context + MjrContext for a model; renders any viewport up to the offscreen size.

    The GL context is created lazily by the first ``render`` (in the calling thread) and must be used
    from that thread afterwards.
    """

    def __init__(self):
        self._gl = None
        self._con = None
        self._scene = None
        self._model = None
        self._thread = None
        self._opt = mujoco.MjvOption()
        self._cam = mujoco.MjvCamera()
        self._buffers: dict = {}

    def _ensure(self, model: mujoco.MjModel, width: int, height: int) -> None:
        if self._gl is not None and self._thread != threading.get_ident():
            # A GL context is bound to the thread that made it current: start afresh in this thread.
            self._drop_context()
        if self._gl is None:
            from mujoco import gl_context
            self._gl = gl_context.GLContext(_MAX_OFFSCREEN[0], _MAX_OFFSCREEN[1])
            self._thread = threading.get_ident()
        self._gl.make_current()
        grow = width > model.vis.global_.offwidth or height > model.vis.global_.offheight
        if grow:
            if width > _MAX_OFFSCREEN[0] or height > _MAX_OFFSCREEN[1]:
                raise ValueError(f"render size {width}x{height} exceeds {_MAX_OFFSCREEN}")
            model.vis.global_.offwidth = max(width, model.vis.global_.offwidth)
            model.vis.global_.offheight = max(height, model.vis.global_.offheight)
        if self._model is not model or grow:
            if self._con is not None:
                self._con.free()
            self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
            self._scene = mujoco.MjvScene(model, maxgeom=200)
            self._model = model
            self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            self._cam.fixedcamid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME)
            for g in range(len(self._opt.geomgroup)):
                self._opt.geomgroup[g] = 1 if g < 3 else 0

    def render(self, model, data, width: int, height: int) -> np.ndarray:
        self._ensure(model, width, height)
        mujoco.mjv_updateScene(model, data, self._opt, None, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        rect = mujoco.MjrRect(0, 0, width, height)
        mujoco.mjr_render(rect, self._scene, self._con)
        buf = self._buffers.get((width, height))
        if buf is None:
            buf = self._buffers[(width, height)] = np.empty((height, width, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(buf, None, rect, self._con)
        return np.ascontiguousarray(buf[::-1])

    def _drop_context(self) -> None:
        """Forget the context of another thread without touching it (its thread may still hold it)."""
        self._gl = self._con = self._scene = self._model = None

    def close(self) -> None:
        if self._gl is not None and self._thread == threading.get_ident():
            try:
                self._gl.make_current()
                if self._con is not None:
                    self._con.free()
                self._gl.free()
            except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
                pass
        self._drop_context()


class FactoryCell:
    """The factory cell simulation (see docs/architecture.md, "Sim core API")."""

    def __init__(self, cfg: CellConfig | None = None, camera_width: int = 64, camera_height: int = 64):
        self.cfg = cfg if cfg is not None else CellConfig()
        self.camera_width, self.camera_height = int(camera_width), int(camera_height)
        self._renderer = _Renderer()
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._layout: Layout | None = None
        self._goal = (0.0, 0.0, 0.0)
        self._cmd_wheels = (0.0, 0.0)
        self.reset()

    # ------------------------------------------------------------------ construction / reset
    def _build(self) -> None:
        self._map_layout = generate_layout(self.cfg)
        self._layout = dataclasses.replace(
            self._map_layout, obstacles=self._map_layout.obstacles + tuple(self.cfg.extra_obstacles))
        self._built_cfg = dataclasses.replace(self.cfg)  # a copy: cfg may be mutated in place
        off = (max(640, self.camera_width), max(480, self.camera_height))
        xml = build_mjcf(self.cfg, self._layout, offscreen=off)
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._chassis = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "chassis")
        self._floor = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        self._wheel_qpos = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in WHEEL_JOINTS]
        self._wheel_dof = [m.jnt_dofadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in WHEEL_JOINTS]
        self._goal_mocap = m.body_mocapid[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "goal")]
        self._cam_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME)
        mover = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "mover")
        self._mover = int(m.body_mocapid[mover]) if mover >= 0 else None
        self._mover_xy = None

    def reset(self, seed: int | None = None, keep_time: bool = False) -> StepResult:
        """Re-generate the cell from ``cfg.seed`` (or ``seed``, which then becomes ``cfg.seed``); robot at
        a seeded free start pose, goal at another one. Time restarts at 0 unless ``keep_time`` (a ROS
        /clock must not jump back). The MuJoCo model is rebuilt only if the layout changes."""
        t = self.time if self.data is not None else 0.0
        if seed is not None and int(seed) != self.cfg.seed:
            self.cfg = self.cfg.replace(seed=int(seed))
        if self._layout is None or self.cfg != self._built_cfg:
            self._build()
        else:
            mujoco.mj_resetData(self.model, self.data)
            self._set_friction(self._layout.floor_friction)
            self._mover_xy = None
        if keep_time:
            self.data.time = t
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed & 0xFFFFFFFF, 4]))
        start = self.sample_free_pose(rng, clearance=0.4)
        goal = self.sample_free_pose(rng, clearance=0.4)
        self._cmd_wheels = (0.0, 0.0)
        self.set_pose(*start)
        self.set_goal(*goal)
        return self._result(False)

    # ------------------------------------------------------------------ state setters
    def set_pose(self, x: float, y: float, yaw: float) -> None:
        """Teleport the robot (velocities zeroed, wheel angles kept)."""
        d = self.data
        d.qpos[0:3] = (x, y, self.cfg.robot.wheel_radius)
        d.qpos[3:7] = quaternion_from_yaw(yaw)
        d.qvel[:] = 0.0
        d.qacc_warmstart[:] = 0.0
        d.ctrl[:] = 0.0
        self._cmd_wheels = (0.0, 0.0)
        mujoco.mj_forward(self.model, d)

    def set_floor_friction(self, mu: float) -> None:
        """Change the floor's sliding friction now (``cfg.floor_friction`` and the layout follow)."""
        mu = float(mu)
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"floor friction must be finite and >= 0, got {mu}")
        self.cfg = self.cfg.replace(floor_friction=mu)
        self._layout = dataclasses.replace(self._layout, floor_friction=mu)
        self._built_cfg = dataclasses.replace(self.cfg)
        self._set_friction(mu)

    def _set_friction(self, mu: float) -> None:
        self.model.geom_friction[self._floor, 0] = mu

    def set_mover(self, x: float, y: float, yaw: float = 0.0) -> None:
        """Place the moving obstacle (``cfg.mover``) now; it pushes the robot like a wall would."""
        if self._mover is None:
            raise ValueError("this cell has no mover (CellConfig.mover is None)")
        self.data.mocap_pos[self._mover] = (x, y, self.cfg.mover.sz / 2)
        self.data.mocap_quat[self._mover] = quaternion_from_yaw(yaw)
        self._mover_xy = (float(x), float(y), float(yaw))

    @property
    def mover(self):
        """The moving obstacle where it is now (an Obstacle), or None."""
        if self._mover_xy is None:
            return None
        return dataclasses.replace(self.cfg.mover, x=self._mover_xy[0], y=self._mover_xy[1], yaw=self._mover_xy[2])

    def set_goal(self, x: float, y: float, yaw: float = 0.0) -> None:
        self._goal = (float(x), float(y), float(wrap_angle(yaw)))
        self.data.mocap_pos[self._goal_mocap] = (x, y, 0.002)

    # ------------------------------------------------------------------ stepping
    def wheel_targets(self, v: float, w: float) -> tuple[float, float]:
        """Diff-drive inverse kinematics, commands clipped to the robot limits: (left, right) rad/s."""
        rb = self.cfg.robot
        v = float(np.clip(v, -rb.max_v, rb.max_v))
        w = float(np.clip(w, -rb.max_w, rb.max_w))
        half_b = rb.wheel_separation / 2
        return (v - w * half_b) / rb.wheel_radius, (v + w * half_b) / rb.wheel_radius

    def step(self, v_cmd: float, w_cmd: float, dt: float = 0.1) -> StepResult:
        """Hold the body command ``(v, w)`` for ``dt`` seconds (rounded to whole physics steps, >= 1)."""
        m, d = self.model, self.data
        if not (math.isfinite(v_cmd) and math.isfinite(w_cmd)):
            v_cmd = w_cmd = 0.0
        self._cmd_wheels = self.wheel_targets(v_cmd, w_cmd)
        scale = self.cfg.robot.wheel_scale
        d.ctrl[0], d.ctrl[1] = self._cmd_wheels[0] * scale[0], self._cmd_wheels[1] * scale[1]
        n = max(1, int(round(dt / m.opt.timestep)))
        collided = False
        step, cid = mujoco.mj_step, self._chassis
        for _ in range(n):
            step(m, d)
            # Only the chassis can make a contact that does not involve the floor (see module doc).
            nc = d.ncon
            if nc and not collided:
                g = d.contact.geom[:nc]
                collided = bool(((g[:, 0] == cid) | (g[:, 1] == cid)).any())
        return self._result(collided)

    def _result(self, collided: bool) -> StepResult:
        return StepResult(pose=self.pose, vel=self.velocity, collided=collided, time=self.time)

    # ------------------------------------------------------------------ observation
    def render(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """RGB uint8 image (H, W, 3) from the robot's forward camera, any size up to 1280x960.

        The GL context (EGL/OSMesa per ``MUJOCO_GL``) is created by the first call, in the calling
        thread; calling from another thread later creates a new one there."""
        w = int(width or self.camera_width)
        h = int(height or self.camera_height)
        return self._renderer.render(self.model, self.data, w, h)

    def camera_intrinsics(self, width: int | None = None, height: int | None = None):
        """Pinhole (fx, fy, cx, cy) of the rendered image (square pixels, MuJoCo's vertical fovy;
        pixel centres at integer coordinates as in OpenCV/ROS)."""
        w = int(width or self.camera_width)
        h = int(height or self.camera_height)
        fovy = math.radians(float(self.model.cam_fovy[self._cam_id]))
        f = (h / 2) / math.tan(fovy / 2)
        return f, f, (w - 1) / 2, (h - 1) / 2

    @property
    def pose(self) -> tuple[float, float, float]:
        q = self.data.qpos
        yaw = yaw_from_quaternion(q[3], q[4], q[5], q[6])
        return float(q[0]), float(q[1]), float(yaw)

    @property
    def velocity(self) -> tuple[float, float]:
        """Body-frame (v, w): forward speed [m/s] and yaw rate [rad/s]."""
        qv = self.data.qvel
        yaw = self.pose[2]
        v = qv[0] * math.cos(yaw) + qv[1] * math.sin(yaw)
        return float(v), float(qv[5])

    @property
    def body_twist(self) -> tuple[float, float, float]:
        """(vx, vy, wz) in the body frame (vy is wheel side-slip)."""
        qv = self.data.qvel
        c, s = math.cos(self.pose[2]), math.sin(self.pose[2])
        return float(qv[0] * c + qv[1] * s), float(-qv[0] * s + qv[1] * c), float(qv[5])

    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def in_collision(self) -> bool:
        d = self.data
        nc = d.ncon
        if not nc:
            return False
        g = d.contact.geom[:nc]
        return bool(((g[:, 0] == self._chassis) | (g[:, 1] == self._chassis)).any())

    @property
    def wheel_angles(self) -> tuple[float, float]:
        q = self.data.qpos
        return float(q[self._wheel_qpos[0]]), float(q[self._wheel_qpos[1]])

    @property
    def wheel_rates(self) -> tuple[float, float]:
        qv = self.data.qvel
        return float(qv[self._wheel_dof[0]]), float(qv[self._wheel_dof[1]])

    @property
    def wheel_efforts(self) -> tuple[float, float]:
        f = self.data.actuator_force
        return float(f[0]), float(f[1])

    @property
    def goal(self) -> tuple[float, float, float]:
        return self._goal

    @property
    def layout(self) -> list:
        """Obstacles (list of :class:`Obstacle`)."""
        return list(self._layout.obstacles)

    @property
    def map_obstacles(self) -> list:
        """The obstacles of the static map: the seeded layout without ``cfg.extra_obstacles``."""
        return list(self._map_layout.obstacles)

    @property
    def cell_layout(self) -> Layout:
        """The full seeded :class:`Layout` (obstacles, appearance, floor friction)."""
        return self._layout

    @property
    def size(self) -> tuple[float, float]:
        return float(self.cfg.size), float(self.cfg.size)

    @property
    def floor_friction(self) -> float:
        return self._layout.floor_friction

    def sample_free_pose(self, rng=None, clearance: float = 0.5) -> tuple[float, float, float]:
        """Uniform collision-free pose: the chassis' circumscribed circle keeps ``clearance`` metres
        to every wall and obstacle. ``rng``: numpy Generator, int seed or None."""
        return sample_free_pose(rng, self._layout.obstacles, self.cfg.size, self.cfg.robot.radius, clearance)

    def close(self) -> None:
        self._renderer.close()

    def __del__(self):  # pragma: no cover - GC order dependent
        try:
            self._renderer.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = ["FactoryCell", "StepResult", "build_mjcf"]
