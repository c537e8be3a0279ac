"""Launch refer_node: `ros2 launch pixelrefer_ros refer.launch.py image_topic:=/cam/image_raw`.

Every argument overrides the YAML (params_file); the YAML overrides the node's declared defaults.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# (name, default, description). The names after params_file/namespace/remaps are node parameters.
ARGUMENTS = [
    ("params_file", PathJoinSubstitution([FindPackageShare("pixelrefer_ros"), "config",
                                          "refer.yaml"]), "YAML with refer_node parameters"),
    ("namespace", "", "namespace of the node and its topics/services"),
    ("image_topic", "camera/image_raw", "camera image topic (remap of camera/image_raw)"),
    ("regions_topic", "camera/regions", "RegionPromptArray topic (remap of camera/regions)"),
    ("backend", "torch", "torch | onnxruntime | tensorrt"),
    ("model_dir", "", "checkpoint directory ('' = built-in shapes model)"),
    ("engine_dir", "", "exported engine directory"),
    ("device", "cpu", "cpu | cuda"),
    ("precision", "fp32", "fp32 | fp16 | bf16"),
    ("use_sim_time", "false", "use /clock (bag playback)"),
]
NODE_PARAMETERS = ["backend", "model_dir", "engine_dir", "device", "precision", "use_sim_time"]


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, default, doc in ARGUMENTS]
    node = Node(
        package="pixelrefer_ros",
        executable="refer_node",
        name="refer_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {name: LaunchConfiguration(name) for name in NODE_PARAMETERS}],
        remappings=[("camera/image_raw", LaunchConfiguration("image_topic")),
                    ("camera/regions", LaunchConfiguration("regions_topic"))],
    )
    return LaunchDescription([*args, node])
