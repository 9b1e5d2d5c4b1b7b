"""Helpers every layer may use: atomic file writes, reading users' text files, facts about the machine,
caches, and the import of peft without bitsandbytes.
"""
