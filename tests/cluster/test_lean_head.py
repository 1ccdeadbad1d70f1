"""The lean head (cluster/connect.py) replaces private names of Ray: they must still exist in
the installed Ray, or the head silently starts as Ray's default (slower) one."""

from __future__ import annotations

import inspect

import ray._private.node as ray_node
import ray._private.parameter as ray_parameter
import ray._private.services as ray_services
import ray._private.utils as ray_utils

from horde.cluster.connect import _dashboard_deps_missing, lean_head


def test_the_names_lean_head_replaces_exist_in_this_ray():
    assert callable(ray_node.Node.start_monitor)
    assert callable(ray_node.Node.start_api_server)
    assert callable(ray_utils.get_dashboard_dependency_error)
    # the dashboard agent's HTTP port is a RayParams argument, Ray's fixed port its default
    params = ray_parameter.RayParams()
    assert params.dashboard_agent_listen_port == 52365
    # the raylet is started through start_ray_process, its agents named by two of its
    # arguments, and ray.init asks for the registered node through services.get_node
    assert list(inspect.signature(ray_services.start_ray_process).parameters)[:2] == ["command", "process_type"]
    raylet_source = inspect.getsource(ray_services.start_raylet)
    assert "--dashboard_agent_command=" in raylet_source and "--runtime_env_agent_command=" in raylet_source
    assert "PROCESS_TYPE_RAYLET" in raylet_source
    assert list(inspect.signature(ray_services.get_node).parameters) == ["gcs_address", "node_id"]


def _names():
    return (
        ray_node.Node.start_monitor,
        ray_node.Node.start_api_server,
        ray_utils.get_dashboard_dependency_error,
        ray_parameter.RayParams,
        ray_services.start_ray_process,
        ray_services.get_node,
    )


def test_lean_head_replaces_them_only_while_it_lasts():
    before = _names()
    with lean_head():
        assert ray_utils.get_dashboard_dependency_error is _dashboard_deps_missing
        assert ray_node.Node.start_monitor is not before[0]
        assert ray_node.Node.start_api_server is not before[1]
        assert ray_parameter.RayParams().dashboard_agent_listen_port == 0  # a free port, picked by the agent
        assert ray_parameter.RayParams(dashboard_agent_listen_port=8000).dashboard_agent_listen_port == 8000
        assert ray_services.start_ray_process is not before[4]
        assert ray_services.get_node is not before[5]
    assert _names() == before


def test_the_dashboard_dependencies_are_found_without_importing_them():
    # horde requires ray[default]: all there, so Ray starts its dashboard processes in full
    assert _dashboard_deps_missing() is None


def test_ray_agents_env_keeps_rays_own_agents(monkeypatch):
    before = ray_services.start_ray_process
    monkeypatch.setenv("HORDE_RAY_AGENTS", "ray")
    with lean_head():
        assert ray_services.start_ray_process is before
