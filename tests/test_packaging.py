"""The package installs from a wheel under one top-level name."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_collab_keras_only(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ROOT,
        ],
        check=True,
    )
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    top_level = {name for name in top_level if not name.endswith(".dist-info")}
    assert top_level == {"collab_keras"}
    assert "collab_keras/models/__init__.py" in names
    assert "collab_keras/training/demo.py" in names

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(tmp_path / wheel),
        ],
        check=True,
    )
    script = (
        "import collab_keras, collab_keras.models, collab_keras.training.demo\n"
        "from collab_keras import CollaborativeAttention\n"
        "print(collab_keras.__file__, collab_keras.models.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    paths = result.stdout.split()
    assert all(path.startswith(str(site)) for path in paths), paths
