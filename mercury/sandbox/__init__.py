"""Everything that touches the Docker engine: the per-message container runner and images."""
