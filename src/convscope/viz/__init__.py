"""convscope.viz."""
