"""Write a tiny random model of a supported family, loadable by path exactly like a real checkpoint.

python jobs/make_tiny_model.py --family llava --out /tmp/tiny-llava
"""

import argparse

from pipeline.models.tiny import FAMILIES, make_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make_tiny_model(args.family, args.out, args.seed)
    print(f"wrote a tiny random {args.family} model to {path} (random weights: its scores mean nothing)")


if __name__ == "__main__":
    main()
