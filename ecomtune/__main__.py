"""`python -m ecomtune ...`, which is what `accelerate launch -m ecomtune` and `torchrun -m ecomtune` run."""

from ecomtune.cli import main

if __name__ == "__main__":
    main()
