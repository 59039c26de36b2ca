"""convscope.data."""
