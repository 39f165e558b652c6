"""Cluster configs. The launcher YAML passes Ray's own schema. The KubeRay manifests pass KubeRay's CRD
schemas, with every field the schema does not declare counted as an error (an API server would drop
it without a word), and they do what the operator needs: a RayJob entrypoint that is one command, a
head Service with the dashboard port, Serve import paths that build the app. The last tests put
known faults back into copies of the manifests and show that the same checker refuses them."""

from __future__ import annotations

import functools
import gzip
import importlib
import os
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
ROOT = CLUSTER.parent
KUBERAY = CLUSTER / "kuberay"
MANIFESTS = sorted(path.name for path in KUBERAY.glob("*.yaml"))
# KubeRay's CRDs (ray-operator/config/crd/bases in the KubeRay repository), vendored gzipped (150 KB of
# 3 MB); KUBERAY_CRDS names another folder of them.
CRD_FOLDER = Path(os.environ.get("KUBERAY_CRDS", Path(__file__).resolve().parent / "kuberay-crds"))
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the 3 MB of CRDs in 1 s, not 20

DASHBOARD_PORT = 8265  # Ray's default, and KubeRay's when rayStartParams has no dashboard-port
GPU = "nvidia.com/gpu"
SERVICE_ACCOUNT = "raycv"


class ManifestError(ValueError):
    """One line: which manifest, which field, what is wrong with it."""


def load_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=YAML_LOADER)


def kuberay(name: str) -> dict:
    return load_yaml(KUBERAY / name)


# ---------------------------------------------------------------------------------------------------
# Schemas: KubeRay's CRDs, plus the few core objects the manifests use.

STRING = {"type": "string"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
# What an API server keeps of a manifest's metadata (ObjectMeta's fields a client may set).
OBJECT_META = {"type": "object", "properties": {
    "name": STRING, "generateName": STRING, "namespace": STRING, "labels": STRING_MAP,
    "annotations": STRING_MAP, "finalizers": {"type": "array", "items": STRING}}}
CORE_SCHEMAS = {
    ("v1", "ServiceAccount"): {"type": "object", "properties": {
        "apiVersion": STRING, "kind": STRING, "metadata": OBJECT_META,
        "automountServiceAccountToken": {"type": "boolean"},
        "imagePullSecrets": {"type": "array", "items": {"type": "object", "properties": {"name": STRING}}},
        "secrets": {"type": "array", "items": {"type": "object", "properties": {key: STRING for key in (
            "apiVersion", "fieldPath", "kind", "name", "namespace", "resourceVersion", "uid")}}},
    }},
}


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """openAPIV3Schema of every served version of every CRD in CRD_FOLDER, by (apiVersion, kind)."""
    if not CRD_FOLDER.is_dir():
        raise FileNotFoundError(f"no KubeRay CRDs at {CRD_FOLDER}: set KUBERAY_CRDS to a folder holding "
                                "ray.io_rayclusters.yaml, ray.io_rayjobs.yaml and ray.io_rayservices.yaml")
    schemas = {}
    for path in sorted([*CRD_FOLDER.glob("*.yaml"), *CRD_FOLDER.glob("*.yaml.gz")]):
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for crd in yaml.load_all(text, Loader=YAML_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def schema_for(manifest: dict) -> dict:
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    schemas = {**CORE_SCHEMAS, **crd_schemas()}
    if key not in schemas:
        known = ", ".join(f"{kind} ({version})" for version, kind in sorted(schemas))
        raise ManifestError(f"no schema for apiVersion={key[0]!r} kind={key[1]!r}; known: {known}")
    return root_schema(key)


@functools.cache
def root_schema(key: tuple[str, str]) -> dict:
    root = {**CORE_SCHEMAS, **crd_schemas()}[key]
    # A CRD declares the root metadata as a bare object: the API server checks it as ObjectMeta itself.
    return with_nullable({**root, "properties": {**root["properties"], "metadata": OBJECT_META}})


@functools.cache
def json_schema_validator(key: tuple[str, str]):
    import jsonschema

    return jsonschema.Draft7Validator(root_schema(key))


def unknown_fields(value, schema: dict, path: str = ""):
    """Paths of the fields in `value` that an API server would prune under this structural schema:
    keys neither declared in `properties` nor covered by `additionalProperties` (a map), outside a
    node marked x-kubernetes-preserve-unknown-fields. An x-kubernetes-embedded-resource object also
    keeps apiVersion, kind and metadata. Pod templates inside KubeRay's CRDs are spelled out field by
    field (no preserve-unknown-fields), so a typo inside a container is found like any other."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if schema.get("x-kubernetes-embedded-resource"):
            properties = {"apiVersion": STRING, "kind": STRING, "metadata": OBJECT_META, **properties}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in properties:
                yield from unknown_fields(item, properties[key], where)
            elif isinstance(additional, dict):
                yield from unknown_fields(item, additional, where)
            elif not (additional is True or preserve):
                yield where
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


def with_nullable(schema):
    """The schema with OpenAPI's `nullable: true` spelled as JSON Schema's type [T, "null"]."""
    if isinstance(schema, list):
        return [with_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: with_nullable(item) for key, item in schema.items()}
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    return schema


def schema_problems(manifest: dict) -> list[str]:
    """Unknown fields first (by path), then what JSON Schema finds: types, enums, required fields."""
    schema = schema_for(manifest)
    validator = json_schema_validator((manifest["apiVersion"], manifest["kind"]))
    problems = [f"{where}: unknown field (the API server would drop it)" for where in unknown_fields(manifest, schema)]
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        parts = (f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        where = "".join(parts).lstrip(".")
        problems.append(f"{where or '(root)'}: {textwrap.shorten(error.message, 160)}")
    return problems


# ---------------------------------------------------------------------------------------------------
# What the schema cannot say: how KubeRay's controllers use the fields.

SHELL_SEPARATORS = ("&&", "||", ";", "|", "&", "\n")


def top_level_separators(command: str) -> list[tuple[int, str]]:
    """(offset, separator) of every shell command separator outside quotes, in order."""
    found, quote, index = [], None, 0
    while index < len(command):
        char = command[index]
        if quote:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                index += 1
        elif char in "'\"":
            quote = char
        elif char == "\\":
            index += 1
        else:
            separator = next((s for s in SHELL_SEPARATORS if command.startswith(s, index)), None)
            # 2>&1 and &> redirect output, they separate nothing
            redirection = separator == "&" and (command[index - 1:index] in "<>" or command[index + 1:index + 2] == ">")
            if separator and not redirection:
                found.append((index, separator))
                index += len(separator) - 1
        index += 1
    return found


def entrypoint_commands(entrypoint: str, where: str = "spec.entrypoint") -> list[list[str]]:
    """The commands a RayJob entrypoint runs, each as an argv list. In K8sJobMode KubeRay pastes the
    entrypoint into its submitter's shell after `ray job submit --no-wait --`, so only the first of
    several top-level commands becomes the Ray job; the rest run in the 1-CPU submitter pod, at the
    same time (KubeRay issues 3802, 3929). Steps therefore go in one `bash -c '...'`, chained by &&."""
    separators = top_level_separators(entrypoint.strip())
    if separators:
        raise ManifestError(
            f"{where} has {separators[0][1]!r} outside quotes: KubeRay runs `ray job submit -- ENTRYPOINT` in a "
            "shell, so only the first command becomes the Ray job and the rest run in the submitter pod; "
            "put the steps in one bash -c '... && ...'")
    argv = shlex.split(entrypoint)
    if argv[:2] not in (["bash", "-c"], ["sh", "-c"]):
        return [argv]
    if len(argv) != 3:
        raise ManifestError(f"{where}: {argv[0]} -c takes the steps as ONE quoted argument, "
                            f"got {len(argv) - 2}: {argv[2:]}")
    script, steps, start = argv[2], [], 0
    for offset, separator in top_level_separators(script) + [(len(script), "&&")]:
        if separator != "&&":
            raise ManifestError(f"{where}: {separator!r} in the {argv[0]} -c script; chain the steps with && so "
                                "that a failed step ends the job")
        steps.append(shlex.split(script[start:offset]))
        start = offset + 2
    return steps


def check_job_command(argv: list[str], where: str) -> None:
    """`python jobs/VERB.py TASK [options]`, with a script that exists (the image has the repo at /app)."""
    if len(argv) < 3 or argv[0] != "python" or not argv[1].startswith("jobs/") or argv[2].startswith("-"):
        raise ManifestError(f"{where}: {shlex.join(argv)!r} is not `python jobs/VERB.py TASK [options]`")
    if not (ROOT / argv[1]).is_file():
        jobs = sorted(f"jobs/{path.name}" for path in (ROOT / "jobs").glob("[a-z]*.py"))
        raise ManifestError(f"{where}: {argv[1]} does not exist; jobs are {', '.join(jobs)}")


CLUSTER_SPEC_PATHS = {"RayCluster": "spec", "RayJob": "spec.rayClusterSpec", "RayService": "spec.rayClusterConfig"}


def cluster_spec_path(manifest: dict) -> str | None:
    """Where the RayCluster spec sits in this manifest (None: not a KubeRay cluster, or a RayJob that
    runs on an existing cluster through clusterSelector)."""
    path = CLUSTER_SPEC_PATHS.get(manifest["kind"])
    return path if path and get(manifest, path) is not None else None


def get(tree: dict, path: str):
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def check_head_dashboard_port(head: dict, where: str) -> None:
    """KubeRay builds the head Service from the Ray container's ports, falling back to its defaults
    (dashboard included) only when none are listed. The RayJob and RayService controllers find the
    dashboard by the Service port NAMED `dashboard`: without it no job and no serveConfigV2 is ever
    submitted."""
    ports = head["template"]["spec"]["containers"][0].get("ports") or []  # KubeRay's Ray container is the first
    if not ports:
        return
    wanted = int(head.get("rayStartParams", {}).get("dashboard-port", DASHBOARD_PORT))
    named = {port.get("name", f"{port['containerPort']}-port"): port["containerPort"] for port in ports}
    if named.get("dashboard") != wanted:
        declared = ", ".join(f"{name}={number}" for name, number in named.items())
        raise ManifestError(
            f"{where}.template.spec.containers[0].ports has {declared} but no port named 'dashboard'={wanted}: "
            "KubeRay builds the head Service from these ports, so the operator cannot reach the dashboard "
            "to submit jobs or serveConfigV2")


def check_manifest(manifest: dict) -> None:
    """Raise ManifestError (one line) for the first problem: schema, entrypoint, head ports."""
    label = f"{manifest.get('kind')} {get(manifest, 'metadata.name')}"
    try:
        problems = schema_problems(manifest)
        if problems:
            raise ManifestError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        if manifest["kind"] == "RayJob":
            for argv in entrypoint_commands(manifest["spec"]["entrypoint"]):
                check_job_command(argv, "spec.entrypoint")
        path = cluster_spec_path(manifest)
        if path:
            check_head_dashboard_port(get(manifest, path)["headGroupSpec"], f"{path}.headGroupSpec")
    except ManifestError as error:
        raise ManifestError(f"{label}: {error}") from None


def check_serve_applications(serve_config: dict) -> None:
    from ray import serve

    for application in serve_config["applications"]:
        module_name, _, attribute = application["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(builder(dict(application["args"])), serve.Application)


def pod_specs(manifest: dict) -> dict[str, dict]:
    """Every pod template spec of a KubeRay manifest's cluster, by group ('head' or the groupName)."""
    cluster = get(manifest, cluster_spec_path(manifest))
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods.update({group["groupName"]: group["template"]["spec"] for group in cluster.get("workerGroupSpecs", [])})
    return pods


KUBERAY_CLUSTERS = ["raycluster.yaml", "rayjob-train.yaml", "rayservice.yaml"]


# ---------------------------------------------------------------------------------------------------
# The launcher (ray up)


def launcher_config() -> dict:
    return load_yaml(CLUSTER / "raycv-aws.yaml")


def validate_launcher(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_launcher_yaml_passes_rays_cluster_schema():
    import jsonschema

    config = launcher_config()
    validate_launcher(config)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    config["available_node_types"]["head"]["min_workers"] = "many"  # the schema does catch mistakes
    with pytest.raises(jsonschema.ValidationError):
        validate_launcher(config)


def test_launcher_gives_every_node_an_instance_profile_and_the_token():
    """Workers write checkpoints to S3, so they need an instance profile (Ray gives one only to the
    head by default); every node runs with the submitting machine's token."""
    config = launcher_config()
    for name, node_type in config["available_node_types"].items():
        arn = node_type["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/raycv-(head|worker)", arn), f"{name}: {arn!r}"
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [command for command in commands if "ray start" in command]
        assert starts and all(command.startswith("RAY_AUTH_MODE=token ray start") for command in starts), starts


# ---------------------------------------------------------------------------------------------------
# The KubeRay manifests as they are


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_its_schema_and_kuberays_checks(name):
    check_manifest(kuberay(name))


def test_every_cluster_manifest_is_checked():
    assert set(KUBERAY_CLUSTERS) <= set(MANIFESTS) and "serviceaccount.yaml" in MANIFESTS


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_cluster_runs_this_ray_with_token_auth_and_the_bucket_account(name):
    manifest = kuberay(name)
    cluster = get(manifest, cluster_spec_path(manifest))
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    for group, pod in pod_specs(manifest).items():
        assert pod.get("serviceAccountName") == SERVICE_ACCOUNT, f"{name} {group}: serviceAccountName"
    assert kuberay("serviceaccount.yaml")["metadata"]["name"] == SERVICE_ACCOUNT


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_head_declares_gcs_dashboard_and_client_ports(name):
    ports = {port["name"]: port["containerPort"] for port in pod_specs(kuberay(name))["head"]["containers"][0]["ports"]}
    assert {"gcs-server": 6379, "dashboard": 8265, "client": 10001}.items() <= ports.items(), ports


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_gpu_groups_select_gpu_nodes_and_tolerate_their_taint(name):
    for group, pod in pod_specs(kuberay(name)).items():
        if any(GPU in container.get("resources", {}).get("limits", {}) for container in pod["containers"]):
            assert pod.get("nodeSelector"), f"{name} {group}: a GPU group without nodeSelector"
            taints = {(t.get("key"), t.get("effect")) for t in pod.get("tolerations", [])}
            assert (GPU, "NoSchedule") in taints, f"{name} {group}: a GPU group that does not tolerate the {GPU} taint"


def test_autoscaling_clusters_configure_the_autoscaler():
    for name in ("raycluster.yaml", "rayservice.yaml"):
        cluster = get(kuberay(name), cluster_spec_path(kuberay(name)))
        assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0


def test_rayjob_is_one_ray_job_of_real_entrypoints_with_valid_arguments():
    from raycv.cli import parse_args

    manifest = kuberay("rayjob-train.yaml")
    assert manifest["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"
    commands = entrypoint_commands(manifest["spec"]["entrypoint"])
    assert [Path(argv[1]).stem for argv in commands] == ["synth", "train"]
    for _python, script, task, *options in commands:
        verb = Path(script).stem
        args = parse_args([task, verb, *options])  # exits on an unknown flag
        assert (args.task, args.verb) == (task, verb)
    gpus = pod_specs(manifest)["gpu"]
    train = commands[1]
    workers = int(train[train.index("--workers") + 1])
    assert "--gpu" in train and workers <= get(manifest, "spec.rayClusterSpec")["workerGroupSpecs"][0]["replicas"]
    assert gpus["containers"][0]["resources"]["limits"][GPU] == "1"


def test_rayservice_serves_serve_config_yaml_with_the_checkpoint_on_the_bucket():
    """serveConfigV2 is serve_config.yaml's block: equal in every field but the checkpoint, which is the
    same run path on the bucket instead of the local runs/ folder."""
    local = load_yaml(CLUSTER / "serve_config.yaml")
    manifest = kuberay("rayservice.yaml")
    deployed = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    local_checkpoint = local["applications"][0]["args"]["checkpoint"]
    bucket_checkpoint = deployed["applications"][0]["args"]["checkpoint"]
    assert bucket_checkpoint.startswith("s3://") and bucket_checkpoint.endswith("/" + local_checkpoint)
    deployed["applications"][0]["args"]["checkpoint"] = local_checkpoint
    assert deployed == local
    check_serve_applications(deployed)
    check_serve_applications(local)


def test_rayservice_states_its_upgrade_strategy():
    # The CRD types it as a plain string; these are the values KubeRay's RayService controller knows.
    strategy = kuberay("rayservice.yaml")["spec"]["upgradeStrategy"]["type"]
    assert strategy in ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")


def test_raycluster_has_cpu_and_gpu_worker_groups():
    manifest = kuberay("raycluster.yaml")
    groups = {group["groupName"]: group for group in manifest["spec"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert set(groups) == {"cpu", "gpu"} and gpu_limits[GPU] == "1"


# ---------------------------------------------------------------------------------------------------
# The checker refuses the faults the manifests used to have, and unknown fields


def refused(manifest: dict) -> str:
    with pytest.raises(ManifestError) as caught:
        check_manifest(manifest)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_checker_refuses_a_chained_entrypoint():
    """The RayJob as it was: synth && train as two top-level commands."""
    manifest = kuberay("rayjob-train.yaml")
    manifest["spec"]["entrypoint"] = (
        "python jobs/synth.py classify --out s3://raycv-bucket/data/shapes --train-size 50000 --val-size 5000 "
        "--overwrite && python jobs/train.py classify --data s3://raycv-bucket/data/shapes "
        "--storage s3://raycv-bucket/runs --epochs 30 --workers 4 --gpu --max-failures 2")
    message = refused(manifest)
    assert message.startswith("RayJob raycv-classify-train: spec.entrypoint has '&&' outside quotes"), message


@pytest.mark.parametrize("entrypoint, problem", [
    ("python jobs/synth.py classify --out x; python jobs/train.py classify --data x", "';' outside quotes"),
    ("python jobs/synth.py classify --out x\npython jobs/train.py classify --data x", r"'\n' outside quotes"),
    ("python jobs/train.py classify --data x | tee log", "'|' outside quotes"),
    ("bash -c 'python jobs/synth.py classify --out x; python jobs/train.py classify --data x'",
     "';' in the bash -c script"),
    ("bash -c python jobs/synth.py classify", "ONE quoted argument"),
    ("python jobs/nope.py classify", "jobs/nope.py does not exist"),
    ("python -m raycv classify train", "is not `python jobs/VERB.py TASK"),
])
def test_checker_refuses_entrypoints_that_are_not_one_job(entrypoint, problem):
    manifest = kuberay("rayjob-train.yaml")
    manifest["spec"]["entrypoint"] = entrypoint
    assert problem in refused(manifest)


def test_checker_refuses_a_head_with_only_the_serve_port():
    """The RayService as it was: the head container declared only the serve port."""
    manifest = kuberay("rayservice.yaml")
    pod_specs(manifest)["head"]["containers"][0]["ports"] = [{"containerPort": 8000, "name": "serve"}]
    message = refused(manifest)
    assert message.startswith("RayService raycv-serve: spec.rayClusterConfig.headGroupSpec.template.spec.containers[0]"
                              ".ports has serve=8000 but no port named 'dashboard'=8265"), message


@pytest.mark.parametrize("name, path", [
    ("rayjob-train.yaml", "spec.rayClusterSpec.headGroupSpec.foo"),
    ("raycluster.yaml", "spec.workerGroupSpecs[1].template.spec.containers[0].resource"),  # inside the pod template
    ("rayservice.yaml", "spec.upgradeStrategy.typ"),
    ("raycluster.yaml", "metadata.label"),
    ("serviceaccount.yaml", "metadata.annotation"),
])
def test_checker_refuses_unknown_fields_and_names_their_path(name, path):
    manifest = kuberay(name)
    *parents, leaf = path.split(".")
    node = manifest
    for part in parents:
        key, _, index = part.partition("[")
        node = node[key][int(index[:-1])] if index else node[key]
    node[leaf] = {"x": 1}
    message = refused(manifest)
    assert f": {path}: unknown field" in message, message


def test_checker_refuses_wrong_types_and_values():
    manifest = kuberay("raycluster.yaml")
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    assert "spec.workerGroupSpecs[0].replicas: 'one' is not of type 'integer'" in refused(manifest)
    manifest = kuberay("raycluster.yaml")
    manifest["spec"]["authOptions"]["mode"] = "password"
    assert "spec.authOptions.mode: 'password' is not one of ['disabled', 'token']" in refused(manifest)


def test_unknown_field_walk_follows_preserve_unknown_fields_and_embedded_resources():
    schema = {"type": "object", "properties": {
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"known": {
            "type": "object", "properties": {"a": STRING}}}},
        "embedded": {"type": "object", "x-kubernetes-embedded-resource": True,
                     "properties": {"spec": {"type": "object"}}},
        "labels": STRING_MAP,
    }}
    value = {"free": {"anything": {"deep": 1}, "known": {"a": "x", "b": "y"}},
             "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "nam": "q"}, "spec": {"x": 1}},
             "labels": {"any": "thing"}}
    assert list(unknown_fields(value, schema)) == ["free.known.b", "embedded.metadata.nam", "embedded.spec.x"]


def test_checker_refuses_a_kind_it_has_no_schema_for():
    message = refused({"apiVersion": "ray.io/v1", "kind": "RayCronJobby"})
    assert "no schema for apiVersion='ray.io/v1' kind='RayCronJobby'" in message


def test_crds_hold_every_kind_the_manifests_use():
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayService")} <= set(crd_schemas())
