"""`python -m peftx` (and `accelerate launch -m peftx run ...`)."""

from peftx.cli import main

main()
