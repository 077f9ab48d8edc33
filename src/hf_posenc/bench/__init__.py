"""Speed and memory benchmark, and the fast-path agreement checks."""
