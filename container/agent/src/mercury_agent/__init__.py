"""Mercury's in-container agent runtime: reads input.json, writes result.json."""

__version__ = "0.1.0"
