"""convscope.tracking."""
