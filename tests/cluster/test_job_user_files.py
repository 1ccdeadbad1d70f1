"""`horde submit` carries a scenario's Python user files in the job's working_dir upload."""

from __future__ import annotations

import pytest

from horde.cluster.job_prepare import JOB_FILES_DIR, prepare_job
from horde.cluster.job_server import JobsError


def _scenario(folder, user_file="users/shop.py"):
    (folder / "users").mkdir(parents=True, exist_ok=True)
    (folder / "users" / "shop.py").write_text("class Shop:\n    async def run(self, client):\n        pass\n")
    scen = folder / "s.yaml"
    scen.write_text(f'name: s\ntarget: embedded\nrequests:\n  - {{name: u, user: "{user_file}:Shop"}}\n')
    return scen


def test_user_files_in_working_dir_travel_with_it(tmp_path):
    scen = _scenario(tmp_path)
    job = prepare_job(scen, working_dir=tmp_path, job_id="x", user_files=["users/shop.py"])
    assert job.files == {}  # the upload holds the scenario and its user file already
    assert " s.yaml " in job.entrypoint + " "


def test_user_files_outside_working_dir_travel_beside_a_copy_of_the_scenario(tmp_path):
    wd, elsewhere = tmp_path / "wd", tmp_path / "elsewhere"
    wd.mkdir()
    scen = _scenario(elsewhere)
    job = prepare_job(scen, working_dir=wd, job_id="x", user_files=["users/shop.py"])
    folder = f"{JOB_FILES_DIR}/{job.job_id}"
    assert set(job.files) == {f"{folder}/s.yaml", f"{folder}/users/shop.py"}
    assert job.files[f"{folder}/users/shop.py"].startswith("class Shop")
    assert f"{folder}/s.yaml" in job.entrypoint


def test_a_user_file_above_the_scenario_outside_working_dir_is_refused(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    scen = _scenario(tmp_path / "a" / "b")
    with pytest.raises(JobsError, match="outside the scenario's folder"):
        prepare_job(scen, working_dir=wd, job_id="x", user_files=["../b/users/shop.py"])
