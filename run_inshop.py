"""In-Shop Clothes Retrieval: run.py with query -> gallery evaluation; the same flags.

    python run_inshop.py --num-image-per-class 3 --batch 256 --lr 1e-4 --recall 1 10 20 30 40 --lambda-mdr 0.1 --nu-mdr 0.01
"""
import sys

from run import cli

if __name__ == "__main__":
    sys.exit(cli(dataset="inshop", description=__doc__))
