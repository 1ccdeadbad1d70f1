"""ray-config.yaml and docs/ray-config.local.yaml, validated offline by Ray's own launcher code.

`ray up` runs prepare_config (defaults, node types) and then validate_config (the JSON
schema ray/autoscaler/ray-schema.json plus its own checks); both run here without a cloud
call. The rest are horde's own rules: a `loadgen` worker type, the job server never open to
the internet, token auth on every node, the Ray version pinned to the one installed here.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from horde.cluster.connect import STREAM_INLINE_BYTES

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / "ray-config.yaml"
LOCAL = REPO / "docs" / "ray-config.local.yaml"
PRIVATE_PORTS = (8265, 6379, 10001)  # job server / dashboard, GCS, Ray client
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _prepared(path: Path) -> dict:
    return prepare_config(copy.deepcopy(_load(path)))


def _public_ingress(config: dict) -> list[str]:
    """Security-group rules that open a Ray port to the whole internet."""
    bad = []
    for rule in config.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        every_port = str(rule.get("IpProtocol")) == "-1"
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        ports = [p for p in PRIVATE_PORTS if every_port or lo == -1 or lo <= p <= hi]
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        if ports and cidrs & OPEN_CIDRS:
            bad.append(f"{ports} from {sorted(cidrs & OPEN_CIDRS)}")
    return bad


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_ray_launcher_accepts_the_config(path):
    prepared = _prepared(path)
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError when wrong
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_config_matches_rays_schema_as_written():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_load(AWS), schema)


def test_validation_can_fail():
    # The same check rejects a broken config: a worker type without its required resources.
    broken = _load(AWS)
    del broken["available_node_types"]["loadgen"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_aws_cluster_has_a_loadgen_worker_type_and_keeps_agents_off_the_head():
    prepared = _prepared(AWS)
    types = prepared["available_node_types"]
    loadgen = types["loadgen"]
    assert loadgen["resources"].get("loadgen", 0) >= 1
    assert 1 <= loadgen["min_workers"] <= loadgen["max_workers"] <= prepared["max_workers"]
    assert types[prepared["head_node_type"]]["resources"].get("CPU") == 0
    # one loadgen unit per vCPU of the instance type (c7i.xlarge / m7i.xlarge: 4, .2xlarge: 8, ...)
    size = loadgen["node_config"]["InstanceType"].split(".")[1]
    vcpus = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32}[size]
    assert loadgen["resources"]["loadgen"] == vcpus


def test_local_cluster_workers_advertise_loadgen_and_the_head_runs_no_agents():
    prepared = _prepared(LOCAL)
    workers = " ".join(prepared["worker_start_ray_commands"])
    assert re.search(r"--resources=.*loadgen", workers)
    assert "--num-cpus=0" in " ".join(prepared["head_start_ray_commands"])
    assert prepared["provider"]["worker_ips"] and prepared["provider"]["head_ip"]


def test_no_ray_port_is_open_to_the_internet():
    config = _load(AWS)
    assert _public_ingress(config) == []
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert any(r["FromPort"] <= 8265 <= r["ToPort"] for r in rules), "8265 is meant to be open inside the VPC"
    # the check itself catches an open rule, a catch-all rule and an IPv6 one
    for rule in (
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
    ):
        opened = copy.deepcopy(config)
        opened["provider"]["security_group"]["IpPermissions"].append(rule)
        assert _public_ingress(opened), rule


def test_local_dashboard_listens_on_loopback_only():
    head = " ".join(_load(LOCAL)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_token_auth_and_no_ray_metrics_on_every_node_and_the_repo_installed(path):
    config = _load(path)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
        # Ray's own metrics stall traffic agents' loops (cluster/connect.py): off on load nodes.
        assert all("RAY_enable_metrics_collection=0" in c for c in start), key
        # Batches up to STREAM_INLINE_BYTES inline in the stream, as on the embedded Ray.
        inline = f"RAY_max_direct_call_object_size={STREAM_INLINE_BYTES}"
        assert all(inline in c for c in start), key
    mounts = config["file_mounts"]
    assert any(remote.endswith("/.ray/auth_token") for remote in mounts)
    assert "." in mounts.values(), "the repository is shipped to every node"
    setup = " ".join(config["setup_commands"])
    assert "pip install -q -e ~/horde" in setup
    # Ray refuses a client and a cluster of different versions: pin the one installed here.
    assert f'"ray[default]=={ray.__version__}"' in setup


def test_docs_point_at_the_local_config():
    text = (REPO / "docs" / "cluster.md").read_text()
    assert "docs/ray-config.local.yaml" in text and "provider:" in text
    assert os.path.basename(LOCAL) in text
