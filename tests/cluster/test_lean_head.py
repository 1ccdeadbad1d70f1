"""The lean head (cluster/connect.py) replaces private names of Ray: they must still exist in
the installed Ray, or the head silently starts as Ray's default (slower) one."""

from __future__ import annotations

import ray._private.node as ray_node
import ray._private.utils as ray_utils

from horde.cluster.connect import _dashboard_deps_missing, lean_head


def test_the_names_lean_head_replaces_exist_in_this_ray():
    assert callable(ray_node.Node.start_monitor)
    assert callable(ray_utils.get_dashboard_dependency_error)


def test_lean_head_replaces_them_only_while_it_lasts():
    before = (ray_node.Node.start_monitor, ray_utils.get_dashboard_dependency_error)
    with lean_head():
        assert ray_utils.get_dashboard_dependency_error is _dashboard_deps_missing
        assert ray_node.Node.start_monitor is not before[0]
    assert (ray_node.Node.start_monitor, ray_utils.get_dashboard_dependency_error) == before


def test_the_dashboard_dependencies_are_found_without_importing_them():
    # horde requires ray[default]: all there, so Ray starts its dashboard processes in full
    assert _dashboard_deps_missing() is None
