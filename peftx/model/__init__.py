"""The task model (input adapter -> backbone -> pooled state -> head), backbone loading, quantization,
memory, and the one parameter counter.
"""
