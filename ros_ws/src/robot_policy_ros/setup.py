"""ament_python package of robot_policy's ROS 2 nodes; built by colcon (`make ros`)."""

from glob import glob

from setuptools import setup

PACKAGE = "robot_policy_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="robot_policy's policy serving node and simulated robot",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"policy_node = {PACKAGE}.policy_node:main",
            f"sim_robot_node = {PACKAGE}.sim_robot_node:main",
            f"record_node = {PACKAGE}.record_node:main",
        ],
    },
)
