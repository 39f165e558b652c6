"""Cluster configs: the launcher YAML passes Ray's own schema, and the KubeRay manifests and the Serve
config point at entrypoints and import paths that exist and accept their arguments."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from raycv.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
ROOT = CLUSTER.parent


def launcher_config() -> dict:
    return yaml.safe_load((CLUSTER / "raycv-aws.yaml").read_text())


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_launcher_yaml_passes_rays_cluster_schema():
    import jsonschema

    config = launcher_config()
    validate(config)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    config["available_node_types"]["head"]["min_workers"] = "many"  # the schema does catch mistakes
    with pytest.raises(jsonschema.ValidationError):
        validate(config)


def kuberay(name: str) -> dict:
    manifest = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert manifest["apiVersion"] == "ray.io/v1"
    return manifest


def check_serve_applications(serve_config: dict) -> None:
    from ray import serve

    for application in serve_config["applications"]:
        module_name, _, attribute = application["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(builder(dict(application["args"])), serve.Application)


def test_rayjob_entrypoints_are_real_jobs_with_valid_arguments():
    manifest = kuberay("rayjob-train.yaml")
    assert manifest["kind"] == "RayJob" and manifest["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    commands = [shlex.split(part) for part in manifest["spec"]["entrypoint"].split("&&")]
    assert len(commands) == 2
    for python, script, task, *options in commands:
        assert python == "python" and (ROOT / script).is_file()
        verb = Path(script).stem
        args = build_parser().parse_args([task, verb, *options])  # argparse exits on an unknown flag
        assert (args.task, args.verb) == (task, verb)


def test_rayservice_and_serve_config_build_the_raycv_app():
    manifest = kuberay("rayservice.yaml")
    assert manifest["kind"] == "RayService" and manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    check_serve_applications(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    check_serve_applications(yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()))


def test_raycluster_has_cpu_and_gpu_worker_groups():
    manifest = kuberay("raycluster.yaml")
    assert manifest["kind"] == "RayCluster" and manifest["spec"]["rayVersion"] == ray.__version__
    groups = {group["groupName"]: group for group in manifest["spec"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert set(groups) == {"cpu", "gpu"} and gpu_limits["nvidia.com/gpu"] == "1"
