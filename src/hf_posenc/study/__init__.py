"""Studies across encodings: compare, sweep, result plots and explanatory figures."""
