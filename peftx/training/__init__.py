"""What trains a built model: the session (precision, accelerator, task, model, splits), the one model
builder (real or on the meta device), the loop, evaluation, batching, checkpoints, optimizers, the
alignment stage and the speed options.
"""
