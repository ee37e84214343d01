"""Extension loader, hooks, skills and the derived-image recipe."""
