"""Write a tiny random model of a supported family, loadable by path exactly like a real checkpoint.

python jobs/make_tiny_model.py --family llava --out /tmp/tiny-llava
python jobs/make_tiny_model.py --family owl2 --hub-layout --out /tmp/tiny-one-align   # as q-future/one-align ships
"""

import argparse

from pipeline.models.tiny import FAMILIES, make_tiny_model
from pipeline.models.tiny_hub import make_owl2_hub_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hub-layout",
        action="store_true",
        help="owl2 only: the published Q-Align layout (pickled .bin shards, remote code, SentencePiece tokenizer)",
    )
    args = parser.parse_args()
    if args.hub_layout and args.family != "owl2":
        parser.error("--hub-layout is for --family owl2")
    if args.hub_layout:
        make_owl2_hub_checkpoint(args.out, args.seed)
        path = args.out
    else:
        path = make_tiny_model(args.family, args.out, args.seed)
    print(f"wrote a tiny random {args.family} model to {path} (random weights: its scores mean nothing)")


if __name__ == "__main__":
    main()
