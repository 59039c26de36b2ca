"""convscope.config."""
