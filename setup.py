"""ament_python build of pixelrefer_ros (also installable with pip into a plain venv)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pixelrefer_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "export", "export.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        # the built-in shapes model, found by refer_node when model_dir is ""
        (f"share/{PACKAGE}/models/shapes", glob("models/shapes/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pixelrefer_ros maintainers",
    maintainer_email="maintainers@pixelrefer-ros.dev",
    description="PixelRefer-Lite region description as a ROS 2 node",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"refer_node = {PACKAGE}.ros.refer_node:main",
            f"synthetic_camera = {PACKAGE}.ros.synthetic_camera:main",
            f"pixelrefer-describe = {PACKAGE}.cli.describe:main",
            "pixelrefer-export = export.cli:main",
        ],
    },
)
