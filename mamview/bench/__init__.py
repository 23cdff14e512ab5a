"""Every `mamview bench …`: measured figures, printed as one table format (and JSON)."""
