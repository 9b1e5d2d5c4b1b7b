"""Protein sequences: subcellular location (SCL2205) and TAPE's remote homology."""
