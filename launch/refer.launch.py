"""Launch refer_node: `ros2 launch pixelrefer_ros refer.launch.py image_topic:=/cam/image_raw`.

Precedence: the node's declared defaults < params_file (YAML) < arguments given on the command
line. A node-parameter argument left at "" is not passed at all, so it never hides the YAML.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# (name, default, description). Names listed in NODE_PARAMETERS are node parameters; "" = unset.
ARGUMENTS = [
    ("params_file", PathJoinSubstitution([FindPackageShare("pixelrefer_ros"), "config",
                                          "refer.yaml"]), "YAML with refer_node parameters"),
    ("namespace", "", "namespace of the node and its topics/services"),
    ("image_topic", "camera/image_raw", "camera image topic (remap of camera/image_raw)"),
    ("regions_topic", "camera/regions", "RegionPromptArray topic (remap of camera/regions)"),
    ("backend", "", "torch | onnxruntime | tensorrt (unset: the YAML's)"),
    ("model_dir", "", "checkpoint directory (unset: the YAML's; '' there = built-in model)"),
    ("engine_dir", "", "exported engine directory (unset: the YAML's)"),
    ("device", "", "cpu | cuda (unset: the YAML's)"),
    ("precision", "", "fp32 | fp16 | bf16 (unset: the YAML's)"),
    ("use_sim_time", "", "true to follow /clock, e.g. for bag playback (unset: false)"),
]
NODE_PARAMETERS = ["backend", "model_dir", "engine_dir", "device", "precision", "use_sim_time"]
# The node's topic names (first camera, default name "camera") -> the launch argument naming
# the real topic. The compressed stream follows image_topic (image_transport convention).
REMAPPINGS = [("camera/image_raw", "image_topic"),
              ("camera/image_raw/compressed", "image_topic"),
              ("camera/regions", "regions_topic")]


def _node(context, *_, **__) -> list[Node]:
    value = {name: LaunchConfiguration(name).perform(context)
             for name, _default, _doc in ARGUMENTS}
    overrides = {name: value[name] for name in NODE_PARAMETERS if value[name] != ""}
    remaps = [(src, value[arg] + ("/compressed" if src.endswith("/compressed") else ""))
              for src, arg in REMAPPINGS]
    return [Node(package="pixelrefer_ros", executable="refer_node", name="refer_node",
                 namespace=value["namespace"], output="screen",
                 parameters=[value["params_file"], overrides], remappings=remaps)]


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, default, doc in ARGUMENTS]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
