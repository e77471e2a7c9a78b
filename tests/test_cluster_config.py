from pathlib import Path

import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

REPO = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_passes_rays_own_schema():
    config = fillout_defaults(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))
    validate_config(config)  # raises on an unknown or ill-typed field
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1 and workers["max_workers"] > workers["min_workers"]
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any("pip install" in c and "qcurate" in c for c in config["setup_commands"])
