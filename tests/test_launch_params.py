"""config/refer.yaml, launch/refer.launch.py and the node's declarations agree (style habit 12).

`launch`/`launch_ros` are not installed here, so the launch file is read with `ast`; its argument
defaults are evaluated the way launch_ros evaluates a parameter given as a substitution
(yaml.safe_load of the string, with None read as "").
"""

from __future__ import annotations

import ast
from dataclasses import fields

import pytest
import yaml

from pixelrefer_ros.ros.params import PARAMS, NodeParams
from tests.rosutil import REPO_ROOT

LAUNCH = REPO_ROOT / "launch" / "refer.launch.py"
YAML = REPO_ROOT / "config" / "refer.yaml"
STANDARD = {"use_sim_time": False}  # declared by every rclpy node, with this default
SPECS = {s.name: s for s in PARAMS}


def _launch_assignments() -> dict[str, ast.expr]:
    tree = ast.parse(LAUNCH.read_text())
    return {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def launch_arguments() -> dict[str, object]:
    """ARGUMENTS as {name: default}; defaults that are substitutions come back as None."""
    out = {}
    for item in _launch_assignments()["ARGUMENTS"].elts:
        name, default = item.elts[0], item.elts[1]
        out[ast.literal_eval(name)] = (ast.literal_eval(default)
                                       if isinstance(default, ast.Constant) else None)
    return out


def launch_node_parameters() -> list[str]:
    return ast.literal_eval(_launch_assignments()["NODE_PARAMETERS"])


def launch_remapped_topics() -> list[str]:
    """The node topic names the launch file remaps (first element of each REMAPPINGS pair)."""
    return [src for src, _arg in ast.literal_eval(_launch_assignments()["REMAPPINGS"])]


def yaml_parameters() -> dict[str, object]:
    return yaml.safe_load(YAML.read_text())["/**"]["ros__parameters"]


def ros_type_name(value: object) -> str:
    from rclpy.parameter import Parameter

    return Parameter.Type.from_parameter_value(value).name


def as_launch_value(text: str) -> object:
    value = yaml.safe_load(text)
    return "" if value is None else value


def test_yaml_sets_every_declared_parameter_with_its_type_and_default():
    values = yaml_parameters()
    assert set(values) == set(SPECS), (set(values) ^ set(SPECS))
    for name, value in values.items():
        spec = SPECS[name]
        assert ros_type_name(value) == ros_type_name(spec.default), name
        assert value == spec.default, f"{name}: YAML {value!r} vs declared {spec.default!r}"
    NodeParams.from_mapping(values)  # and the values validate


def test_launch_node_parameters_are_declared_with_matching_types():
    args = launch_arguments()
    for name in launch_node_parameters():
        assert name in SPECS or name in STANDARD, f"launch sets undeclared parameter {name}"
        assert name in args, f"launch passes {name} but declares no argument for it"
        # "" means "not passed": a default that is set would silently override the YAML.
        assert args[name] == "", f"{name}: launch default {args[name]!r} would hide the YAML"


def test_launch_arguments_parse_to_the_declared_types():
    """What a user types (launch evaluates it with yaml.safe_load) has the declared type."""
    examples = {"backend": "onnxruntime", "model_dir": "/models/lite2b", "engine_dir": "/e",
                "device": "cuda", "precision": "bf16", "use_sim_time": "true"}
    for name in launch_node_parameters():
        default = SPECS[name].default if name in SPECS else STANDARD[name]
        value = as_launch_value(examples[name])
        assert ros_type_name(value) == ros_type_name(default), name
        if name in SPECS:
            NodeParams.from_mapping({name: value})


def test_launch_remaps_the_node_topics():
    camera = SPECS["cameras"].default[0]
    assert set(launch_remapped_topics()) == {f"{camera}/image_raw", f"{camera}/regions",
                                             f"{camera}/image_raw/compressed"}
    args = launch_arguments()
    for _src, arg in ast.literal_eval(_launch_assignments()["REMAPPINGS"]):
        assert arg in args, f"remap uses undeclared launch argument {arg}"


def test_dataclass_matches_the_table():
    assert [f.name for f in fields(NodeParams)] == [s.name for s in PARAMS]
    assert all(s.description for s in PARAMS)


@pytest.mark.parametrize(("name", "value", "words"), [
    ("backend", "tensorflow", "torch, onnxruntime, tensorrt"),
    ("device", "tpu", "cpu, cuda"),
    ("precision", "int4", "fp32, fp16, bf16"),
    ("image_transport", "theora", "raw, compressed"),
    ("image_qos_reliability", "best-effort", "best_effort, reliable, system_default"),
    ("cameras", ["a", "a"], "distinct"),
    ("cameras", [], "non-empty"),
    ("image_qos_depth", 0, ">= 1"),
    ("request_timeout_s", float("nan"), "> 0"),
    ("stamp_tolerance_s", -1.0, ">= 0"),
    ("cuda_graph_tokens", -1, ">= 0"),
    ("max_region_patches", -5, ">= 0"),
])
def test_bad_values_are_refused_with_the_allowed_ones(name, value, words):
    with pytest.raises(ValueError, match="parameter " + name) as info:
        NodeParams.from_mapping({name: value})
    assert words in str(info.value)


def test_cuda_index_is_a_valid_device():
    assert NodeParams.from_mapping({"device": "cuda:1"}).device == "cuda:1"


def test_declared_on_a_real_node_with_the_yaml_as_overrides():
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from pixelrefer_ros.ros.params import declare_parameters, read_parameters

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        overrides = [Parameter(k, value=v) for k, v in yaml_parameters().items()]
        node = rclpy.create_node("params_probe", context=ctx, parameter_overrides=overrides)
        declare_parameters(node)
        params = read_parameters(node)
        assert params == NodeParams.from_mapping(yaml_parameters())
        for spec in PARAMS:
            descriptor = node.describe_parameter(spec.name)
            assert descriptor.read_only and spec.description in descriptor.description
            assert node.get_parameter(spec.name).type_.name == ros_type_name(spec.default)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
