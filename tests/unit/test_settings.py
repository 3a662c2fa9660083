"""Settings: defaults < TOML file < VISION_API_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings
from service.wiring import build_pool

CONFIG = """
[runtime]
device = "cpu"
max_batch_size = 4

[urls]
url_allowed_networks = ["10.0.0.0/8"]

[models.dinov3]
default_variant = "mine"
[models.dinov3.variants.mine]
source = "/models/dinov3-mine"
[models.dinov3.variants.vitb16]
source = "/mirror/dinov3-vitb16"
license = "DINOv3 License"
"""


def test_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.runtime.device == "auto" and settings.limits.max_images_per_request == 16
    assert settings.jobs.redis_url is None and settings.urls.url_allowed_networks == []


def test_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = {
        "VISION_API_CONFIG": str(config),
        "VISION_API_MAX_BATCH_SIZE": "2",
        "VISION_API_URL_ALLOWED_NETWORKS": "192.168.0.0/16, 10.1.0.0/16",
        "VISION_API_LAZY_LOADING": "false",
        "VISION_API_REDIS_URL": "redis://localhost:6379/3",
    }
    settings = Settings.load(environ=env)
    assert settings.runtime.device == "cpu"
    assert settings.runtime.max_batch_size == 2
    assert settings.runtime.lazy_loading is False
    assert settings.urls.url_allowed_networks == ["192.168.0.0/16", "10.1.0.0/16"]
    assert settings.jobs.redis_url == "redis://localhost:6379/3"
    assert settings.config_file == str(config)


def test_config_variants_extend_builtins(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    pool = build_pool(Settings.load(config, environ={}))
    name, spec = pool.resolve("dinov3", None)
    assert (name, spec.name, spec.source) == ("dinov3", "mine", "/models/dinov3-mine")
    assert pool.resolve("dinov3", "vitb16")[1].source == "/mirror/dinov3-vitb16"
    assert pool.resolve("dinov3", "vits16")[1].source == "facebook/dinov3-vits16-pretrain-lvd1689m"


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("[runtime]\nmax_batch_size = 0\n", {}, "max_batch_size"),
        ("[runtime]\nunknown_knob = 1\n", {}, "unknown_knob"),
        ("not = [toml", {}, "Cannot read"),
        ("", {"VISION_API_MAX_BATCH_SIZE": "many"}, "max_batch_size"),
    ],
)
def test_invalid_settings_say_what(tmp_path: Path, content: str, env: dict, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    with pytest.raises(ValueError, match=message):
        Settings.load(config, environ=env)
