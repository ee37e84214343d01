"""Operator-installed extensions (docs/extensions.md): reading them from disk and the
config file's list of enabled ones. What a manifest may say is core/extension_spec.py's."""

from mercury.extensions.loader import (
    ExtensionConfigError,
    LoadedExtension,
    load_enabled,
    load_extension,
)

__all__ = ["ExtensionConfigError", "LoadedExtension", "load_enabled", "load_extension"]
