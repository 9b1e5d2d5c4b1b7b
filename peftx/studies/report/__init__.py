"""Reports from result.json files alone: markdown tables and PNG plots."""
