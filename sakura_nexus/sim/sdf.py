"""Export the factory cell as a Gazebo (gz-sim) SDF 1.9 world with the same layout as the MuJoCo cell.

The robot gets gz-sim's diff-drive, joint-state-publisher and touch plugins and a camera sensor; the
Gazebo topic names below are bridged to the sim_node ROS topics by config/gz_bridge.yaml.
"""
from __future__ import annotations

import math
from xml.sax.saxutils import escape

from .layout import KIND_RGBA, CellConfig, generate_layout

WORLD_NAME = "factory_cell"
ROBOT_NAME = "sakura_robot"

# Gazebo transport topics published / subscribed by the exported world (absolute gz names).
GZ_TOPICS = {
    "image": "/camera/image_raw",
    "camera_info": "/camera/camera_info",  # gz-sensors derives it from the image topic
    "odom": "/odom",
    "joint_states": "/joint_states",
    "clock": "/clock",
    "contacts": "/robot/touched",           # TouchPlugin: <namespace>/touched, gz.msgs.Boolean
    "cmd_vel": "/cmd_vel",
}


def _v(*xs) -> str:
    return " ".join(f"{float(x):.6g}" for x in xs)


def _rgba(c) -> str:
    return _v(*c[:3], c[3] if len(c) > 3 else 1.0)


def _material(rgb, spec=0.1) -> str:
    c = _rgba(rgb)
    return (f"<material><ambient>{c}</ambient><diffuse>{c}</diffuse>"
            f"<specular>{_v(spec, spec, spec, 1)}</specular></material>")


def _box_inertia(m, sx, sy, sz) -> str:
    ixx, iyy, izz = m * (sy * sy + sz * sz) / 12, m * (sx * sx + sz * sz) / 12, m * (sx * sx + sy * sy) / 12
    return (f"<inertial><mass>{m:.6g}</mass><inertia><ixx>{ixx:.6g}</ixx><iyy>{iyy:.6g}</iyy><izz>{izz:.6g}</izz>"
            "<ixy>0</ixy><ixz>0</ixz><iyz>0</iyz></inertia></inertial>")


def _static_box(name: str, pose, size, rgba, indent="    ") -> str:
    geo = f"<geometry><box><size>{_v(*size)}</size></box></geometry>"
    return (f'{indent}<model name="{escape(name)}">\n'
            f"{indent}  <static>true</static>\n"
            f"{indent}  <pose>{_v(*pose)}</pose>\n"
            f'{indent}  <link name="link">\n'
            f'{indent}    <collision name="collision">{geo}</collision>\n'
            f'{indent}    <visual name="visual">{geo}{_material(rgba)}</visual>\n'
            f"{indent}  </link>\n"
            f"{indent}</model>\n")


def _robot(cfg: CellConfig, start, image_size) -> str:
    rb = cfg.robot
    r = rb.wheel_radius
    x0, y0, yaw0 = start
    zc = (rb.chassis_bottom + rb.chassis_top) / 2 - r
    hz = rb.chassis_top - rb.chassis_bottom
    w, h = image_size
    hfov = 2 * math.atan(math.tan(math.radians(rb.camera_fovy) / 2) * w / h)
    caster_r = 0.02
    wheels = []
    for name, side in (("left", 1), ("right", -1)):
        wy = side * rb.wheel_separation / 2
        geo = f"<geometry><cylinder><radius>{r}</radius><length>{rb.wheel_width}</length></cylinder></geometry>"
        iw = rb.wheel_mass * (3 * r * r + rb.wheel_width ** 2) / 12
        wheels.append(f"""
      <link name="{name}_wheel">
        <pose relative_to="base_link">0 {wy:.6g} 0 -1.5707963 0 0</pose>
        <inertial><mass>{rb.wheel_mass}</mass><inertia><ixx>{iw:.6g}</ixx><iyy>{iw:.6g}</iyy>
          <izz>{rb.wheel_mass * r * r / 2:.6g}</izz><ixy>0</ixy><ixz>0</ixz><iyz>0</iyz></inertia></inertial>
        <collision name="collision">{geo}</collision>
        <visual name="visual">{geo}{_material((0.08, 0.08, 0.08, 1))}</visual>
      </link>
      <joint name="{name}_wheel_joint" type="revolute">
        <parent>base_link</parent>
        <child>{name}_wheel</child>
        <axis><xyz expressed_in="base_link">0 1 0</xyz>
          <limit><lower>-1e16</lower><upper>1e16</upper><effort>{rb.wheel_torque}</effort></limit></axis>
      </joint>""")
    casters = []
    for name, cx in (("caster_front", rb.length / 2 - 0.05), ("caster_rear", -rb.length / 2 + 0.05)):
        casters.append(f"""
        <collision name="{name}">
          <pose>{_v(cx, 0, -r + caster_r)} 0 0 0</pose>
          <geometry><sphere><radius>{caster_r}</radius></sphere></geometry>
          <surface><friction><ode><mu>0</mu><mu2>0</mu2></ode></friction></surface>
        </collision>""")
    cam = rb.camera_pos
    chassis_geo = f"<geometry><box><size>{_v(rb.length, rb.width, hz)}</size></box></geometry>"
    inertial = _box_inertia(rb.mass, rb.length, rb.width, hz).replace(
        "<inertial>", f"<inertial><pose>0 0 {zc:.6g} 0 0 0</pose>")
    return f"""    <model name="{ROBOT_NAME}">
      <pose>{_v(x0, y0, 0, 0, 0, yaw0)}</pose>
      <link name="base_link">
        <pose>0 0 {r:.6g} 0 0 0</pose>
        {inertial}
        <collision name="chassis">
          <pose>0 0 {zc:.6g} 0 0 0</pose>
          {chassis_geo}
        </collision>
        <visual name="chassis_visual">
          <pose>0 0 {zc:.6g} 0 0 0</pose>
          {chassis_geo}
          {_material((0.85, 0.35, 0.1, 1), 0.3)}
        </visual>{"".join(casters)}
        <sensor name="chassis_contact" type="contact">
          <contact><collision>chassis</collision></contact>
        </sensor>
        <sensor name="front_camera" type="camera">
          <pose>{_v(*cam)} 0 {rb.camera_pitch:.6g} 0</pose>
          <always_on>true</always_on>
          <update_rate>30</update_rate>
          <topic>{GZ_TOPICS["image"]}</topic>
          <gz_frame_id>camera_optical_frame</gz_frame_id>
          <camera name="front_camera">
            <horizontal_fov>{hfov:.6f}</horizontal_fov>
            <image><width>{w}</width><height>{h}</height><format>R8G8B8</format></image>
            <clip><near>0.02</near><far>20</far></clip>
          </camera>
        </sensor>
      </link>{"".join(wheels)}
      <plugin filename="gz-sim-diff-drive-system" name="gz::sim::systems::DiffDrive">
        <left_joint>left_wheel_joint</left_joint>
        <right_joint>right_wheel_joint</right_joint>
        <wheel_separation>{rb.wheel_separation}</wheel_separation>
        <wheel_radius>{r}</wheel_radius>
        <topic>{GZ_TOPICS["cmd_vel"]}</topic>
        <odom_topic>{GZ_TOPICS["odom"]}</odom_topic>
        <frame_id>odom</frame_id>
        <child_frame_id>base_link</child_frame_id>
        <odom_publisher_frequency>50</odom_publisher_frequency>
        <max_linear_velocity>{rb.max_v}</max_linear_velocity>
        <min_linear_velocity>{-rb.max_v}</min_linear_velocity>
        <max_angular_velocity>{rb.max_w}</max_angular_velocity>
        <min_angular_velocity>{-rb.max_w}</min_angular_velocity>
        <max_linear_acceleration>2.0</max_linear_acceleration>
        <min_linear_acceleration>-2.0</min_linear_acceleration>
      </plugin>
      <plugin filename="gz-sim-joint-state-publisher-system" name="gz::sim::systems::JointStatePublisher">
        <topic>{GZ_TOPICS["joint_states"]}</topic>
        <joint_name>left_wheel_joint</joint_name>
        <joint_name>right_wheel_joint</joint_name>
      </plugin>
      <plugin filename="gz-sim-touchplugin-system" name="gz::sim::systems::TouchPlugin">
        <target>(wall|obstacle)</target>
        <namespace>robot</namespace>
        <time>0.001</time>
        <enabled>true</enabled>
      </plugin>
    </model>
"""


def export_sdf(cfg: CellConfig | None = None, image_size=(320, 240), start=None) -> str:
    """SDF 1.9 world text for ``cfg`` (default: seed 0). The robot starts at ``start`` (x, y, yaw) or at
    the same seeded start pose as ``FactoryCell.reset()``."""
    cfg = cfg if cfg is not None else CellConfig()
    lay = generate_layout(cfg)
    ap = lay.appearance
    if start is None:
        import numpy as np

        from .layout import sample_free_pose
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed & 0xFFFFFFFF, 4]))
        start = sample_free_pose(rng, lay.obstacles, cfg.size, cfg.robot.radius, 0.4)
    half, t, h = cfg.size / 2, cfg.wall_thickness, cfg.wall_height
    floor_rgb = tuple((a + b) / 2 for a, b in zip(ap.floor_rgb1, ap.floor_rgb2, strict=True))
    wall_rgb = tuple((a + b) / 2 for a, b in zip(ap.wall_rgb1, ap.wall_rgb2, strict=True))
    parts = []
    for i, (px, py, sx, sy) in enumerate([
        (half + t / 2, 0, t, cfg.size + 2 * t), (-half - t / 2, 0, t, cfg.size + 2 * t),
        (0, half + t / 2, cfg.size + 2 * t, t), (0, -half - t / 2, cfg.size + 2 * t, t),
    ]):
        parts.append(_static_box(f"wall_{i}", (px, py, h / 2, 0, 0, 0), (sx, sy, h), wall_rgb + (1.0,)))
    for i, ob in enumerate(lay.obstacles):
        parts.append(_static_box(f"obstacle_{i}_{ob.kind}", (ob.x, ob.y, ob.sz / 2, 0, 0, ob.yaw),
                                 (ob.sx, ob.sy, ob.sz), KIND_RGBA[ob.kind]))
    fr = lay.floor_friction
    plane = ("<geometry><plane><normal>0 0 1</normal>"
             f"<size>{_v(cfg.size + 2 * t, cfg.size + 2 * t)}</size></plane></geometry>")
    ambient = ap.ambient
    return f"""<?xml version="1.0" ?>
<!-- Generated by sakura_nexus.sim.export_sdf(CellConfig(seed={cfg.seed})): do not edit by hand.
     Same layout as the MuJoCo cell (FactoryCell(CellConfig(seed={cfg.seed}))). Topics: config/gz_bridge.yaml. -->
<sdf version="1.9">
  <world name="{WORLD_NAME}">
    <physics name="2ms" type="ignored">
      <max_step_size>{cfg.timestep}</max_step_size>
      <real_time_factor>1.0</real_time_factor>
    </physics>
    <plugin filename="gz-sim-physics-system" name="gz::sim::systems::Physics"/>
    <plugin filename="gz-sim-user-commands-system" name="gz::sim::systems::UserCommands"/>
    <plugin filename="gz-sim-scene-broadcaster-system" name="gz::sim::systems::SceneBroadcaster"/>
    <plugin filename="gz-sim-contact-system" name="gz::sim::systems::Contact"/>
    <plugin filename="gz-sim-sensors-system" name="gz::sim::systems::Sensors">
      <render_engine>ogre2</render_engine>
    </plugin>
    <scene>
      <ambient>{_v(*ambient, 1)}</ambient>
      <background>{_v(*ap.sky_rgb1, 1)}</background>
      <shadows>false</shadows>
    </scene>
    <light type="directional" name="sun">
      <cast_shadows>false</cast_shadows>
      <pose>0 0 5 0 0 0</pose>
      <diffuse>{_v(*ap.light_diffuse, 1)}</diffuse>
      <specular>0.1 0.1 0.1 1</specular>
      <direction>{_v(*ap.light_dir)}</direction>
    </light>
    <model name="floor">
      <static>true</static>
      <link name="link">
        <collision name="collision">
          {plane}
          <surface><friction><ode><mu>{fr:.6g}</mu><mu2>{fr:.6g}</mu2></ode></friction></surface>
        </collision>
        <visual name="visual">
          {plane}
          {_material(floor_rgb + (1.0,), 0.1)}
        </visual>
      </link>
    </model>
{"".join(parts)}{_robot(cfg, start, image_size)}  </world>
</sdf>
"""

