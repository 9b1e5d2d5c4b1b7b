"""ListOps: LRA's generator and files, and its symbol vocabulary."""
