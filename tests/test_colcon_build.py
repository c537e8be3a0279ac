"""The ROS-workspace install path: colcon builds both packages the way a Jetson user would.

This exercises package.xml, setup.py/setup.cfg and msg/CMakeLists.txt for real, then imports the
generated interfaces from the colcon install space and checks what setup.py installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.rosutil import REPO_ROOT

VENV = Path(sys.prefix)


def _copy_sources(dest: Path) -> None:
    """Copy the tracked sources only (no .venv/build) into a fresh workspace's src/."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    for rel in files.splitlines():
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(("models/", "tests/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_colcon_builds_both_packages(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    pkg = ws / "src" / "pixelrefer_ros"
    _copy_sources(pkg)
    env = dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}",
               CMAKE_PREFIX_PATH=str(VENV), AMENT_PREFIX_PATH=str(VENV))
    env.pop("PYTHONPATH", None)
    # colcon does not descend into a package's subfolders, so msg/ is named explicitly.
    cmd = [str(VENV / "bin" / "colcon"), "build", "--base-paths", "src", "src/pixelrefer_ros/msg",
           "--merge-install", "--event-handlers", "console_cohesion+",
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    result = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Summary: 2 packages finished" in result.stdout, result.stdout[-2000:]

    install = ws / "install"
    share = install / "share" / "pixelrefer_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "refer.launch.py").is_file()
    assert (share / "config" / "refer.yaml").is_file()
    for exe in ("refer_node", "synthetic_camera"):
        assert (install / "lib" / "pixelrefer_ros" / exe).is_file(), exe
    srv_file = install / "share" / "pixelrefer_ros_interfaces" / "srv" / "DescribeRegion.srv"
    assert srv_file.is_file()

    # What `source install/setup.bash` would give a user, minus the shell: the install space's
    # site-packages and libraries come first, so these imports must resolve there.
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = install / "lib" / py / "site-packages"
    run_env = dict(env, PYTHONPATH=str(site), LD_LIBRARY_PATH=f"{install / 'lib'}",
                   AMENT_PREFIX_PATH=f"{install}:{VENV}")
    probe = ("import pixelrefer_ros_interfaces.srv as s, pixelrefer_ros as p; "
             "r = s.DescribeRegion.Request(object_ids=[3]); print(s.__file__); print(p.__file__); "
             "print(list(r.object_ids))")
    out = subprocess.run([sys.executable, "-c", probe], env=run_env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert lines[0].startswith(str(install)), lines
    assert lines[1].startswith(str(install)), lines
    assert lines[2] == "[3]"
