"""Configuration: the schema (models), and reading + validating it (loader)."""

from kairos.config.loader import ConfigError, config_path_from_env, load_config, parse_config
from kairos.config.models import GatewayConfig, RouterConfig

__all__ = ["ConfigError", "GatewayConfig", "RouterConfig", "config_path_from_env", "load_config", "parse_config"]
