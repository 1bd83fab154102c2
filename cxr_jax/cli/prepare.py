"""`cxr-jax data prepare`: a source's TFDS dataset (ArrayRecord) for `data.*.tfds_data_dir` (`data/tfds_sets.py`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options besides SOURCE, --path and --split (`main._add_source`); --split defaults to the source's own."""
    parser.set_defaults(split=None)
    parser.add_argument("--data-dir", required=True, help="the TFDS data dir to build DATA_DIR/cxr_SOURCE/1.0.0 in")
    parser.add_argument("--uncertain", choices=("zeros", "ones", "ignore"), default="zeros",
                        help="chexpert, mimic: the policy for uncertain (-1) labels stored (data.*.uncertain)")
    parser.add_argument("--all-views", action="store_true",
                        help="chexpert, mimic: keep lateral views too (data.*.frontal_only=False)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a bad file or row: stop with its name, or leave it out and count it")


def run(args, spec) -> int:
    """Builds the dataset of `spec` (SOURCE and --path) in --data-dir and says how to train from it."""
    from cxr_jax.data import tfds_sets

    spec.uncertain, spec.frontal_only = args.uncertain, not args.all_views
    splits = [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None
    print(f"preparing {args.source} from {args.path} in {args.data_dir} …", flush=True)
    path, sizes = tfds_sets.prepare(spec, args.data_dir, splits=splits)
    print(f"wrote {path}: " + ", ".join(f"{split} {num}" for split, num in sizes.items()) + " examples "
          f"(TFDS, {tfds_sets.FILE_FORMAT}); read it with --config.data.train.tfds_data_dir={args.data_dir} "
          f"(and data.train.source={args.source})")
    return 0
