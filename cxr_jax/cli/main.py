"""`cxr-jax` command line: parses flags and calls library functions; nothing else lives here.

Each command is an entry in COMMANDS: a function adding its arguments and a function running it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

CONFIG_HELP = "config file and variant, e.g. configs/classifier.py:smoke; override keys with --config.a.b=value"


def _add_config(parser: argparse.ArgumentParser, workdir: bool = True) -> None:
    parser.add_argument("--config", required=True, help=CONFIG_HELP)
    if workdir:
        parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, eval)")


def _train(args, config) -> int:
    from cxr_jax.train import loop, workdir

    try:
        loop.train(config, args.workdir)
    except ValueError as e:  # A resume's user errors (a checkpoint that does not fit the model) become one line.
        error = workdir.resume_error(e)
        if error is None:
            raise
        raise error from e
    except loop.Preempted as e:
        print(e, file=sys.stderr)
        return 143
    except (loop.NonFiniteError, loop.WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="latest",
                        help="which checkpoint of the run: latest, best (by eval.best_metric) or a step number")


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    _add_checkpoint(parser)


def _evaluate(args, config) -> int:
    from cxr_jax import runs

    result = runs.evaluate(config, args.workdir, which=args.checkpoint)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _add_bench(parser: argparse.ArgumentParser) -> None:
    _add_config(parser, workdir=False)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak-FLOP/s matmul")
    parser.add_argument("--data", action="store_true",
                        help="time the input side instead: reading data.train and each augmentation pipeline")
    parser.add_argument("--num-batches", type=int, default=20, help="--data: batches timed per pipeline")
    parser.add_argument("--compile-only", action="store_true",
                        help="stop after compiling: FLOPs and XLA's memory plan of one step")
    parser.add_argument("--steps", type=int, help="timed steps (default: the config's bench.num_steps)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: bench.warmup_steps)")


def _bench(args, config) -> int:
    from cxr_jax import bench

    if args.steps is not None:
        config.bench.num_steps = args.steps
    if args.warmup is not None:
        config.bench.warmup_steps = args.warmup
    if args.data:
        result = bench.run_data(config, num_batches=args.num_batches)
    else:
        result = bench.run(config, matmul_size=args.matmul_size, compile_only=args.compile_only)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    if not args.data:
        print(bench.summary(result))
    return 0


def _add_run(parser: argparse.ArgumentParser, what: str) -> None:
    """--workdir of a trained run and an optional --config; without it `main` loads the run's own config."""
    parser.add_argument("--workdir", required=True, help=f"a trained {what} run")
    parser.add_argument("--config", help="config file and variant (default: the run's WORKDIR/config.json)")
    _add_checkpoint(parser)
    parser.set_defaults(config_from_run=True)


def _add_retrieve(parser: argparse.ArgumentParser) -> None:
    _add_run(parser, "ConVIRT")
    parser.add_argument("--query", required=True, help="the report text to search with")
    parser.add_argument("--images", required=True, nargs="+", help="image files or directories (searched recursively)")
    parser.add_argument("--top-k", type=int, default=5, help="how many matches to keep")
    parser.add_argument("--out", required=True, help="directory for matches.json and matches.png")


def _retrieve(args, config) -> int:
    from cxr_jax.cli import retrieve

    result = retrieve.run(config, args.workdir, query=args.query, images=args.images, top_k=args.top_k, out=args.out,
                          which=args.checkpoint)
    for match in result["matches"]:
        print(f"{match['rank']:3d}  {match['score']:+.4f}  {match['file']}")
    print(f"wrote {args.out}/matches.json and matches.png")
    return 0


def _add_decompose(parser: argparse.ArgumentParser) -> None:
    _add_run(parser, "DGM")
    parser.add_argument("images", nargs="+", help="image files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the PNGs and JSONs")
    parser.add_argument("--lung-masks", help="lung masks: DIR/NAME.png or DIR/{left,right}_lung/NAME.png "
                        "(default: the whole image counts as lung)")


def _decompose(args, config) -> int:
    from cxr_jax.cli import decompose

    records = decompose.run(config, args.workdir, images=args.images, out=args.out, lung_masks=args.lung_masks,
                            which=args.checkpoint)
    for record in records:
        best = max((c["score"] for c in record["components"]), default=0.0)
        print(f"{len(record['components']):3d} regions  max score {best:.3f}  {record['image']}")
    print(f"wrote {args.out}: normal, residue, heat-map and saliency PNGs, the residue as .npy and a JSON per image")
    return 0


def _add_segment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained segment run (configs/segment.py)")
    parser.add_argument("images", nargs="+", help="image files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the masks and overlays")
    _add_checkpoint(parser)


def _segment(args, config) -> int:
    from cxr_jax.cli import segment

    records = segment.run(args.workdir, images=args.images, out=args.out, which=args.checkpoint)
    for record in records:
        areas = "  ".join(f"{k.removeprefix('area_')} {v:.3f}" for k, v in record.items() if k.startswith("area_"))
        print(f"{areas}  {record['image']}")
    print(f"wrote {args.out}: NAME_<structure>.png masks and NAME_overlay.png per image (original size)")
    return 0


def _add_source(parser: argparse.ArgumentParser, split_help: str = "split to read") -> argparse.ArgumentParser:
    """The arguments every `data` action shares: SOURCE, --path and --split (read by `_data_spec`)."""
    parser.add_argument("source")
    parser.add_argument("--path", help="a directory in the source's layout")
    parser.add_argument("--split", default="all", help=split_help)
    return parser


def _add_data(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the data sources and their layouts")
    inspect = _add_source(actions.add_parser("inspect", help="print a JSON summary of a data set"),
                          "split to read (all, train, valid; nih1000: train, valid)")
    inspect.add_argument("--num-examples", type=int, default=0, help="phantom: how many images to draw")
    inspect.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                         help="a bad file or row: stop with its name, or leave it out and count it")
    show = _add_source(actions.add_parser("show", help="write a contact sheet PNG (masks, landmarks, boxes, text)"))
    show.add_argument("--out", required=True, help="the PNG to write")
    show.add_argument("--num", type=int, default=8, help="how many examples")
    show.add_argument("--image-size", type=int, default=256, help="side the images are resized to")
    rset = _add_source(actions.add_parser("retrieval-set", help="write a category retrieval set in the CheXpert "
                                          "8×200 format (candidates.csv, image_queries.csv, text_queries.csv)"))
    rset.add_argument("--out", required=True, help="the directory to write")
    rset.add_argument("--queries", type=int, default=10, help="image queries per category")
    rset.add_argument("--candidates", type=int, default=200, help="candidates per category")
    rset.add_argument("--num-examples", type=int, default=0, help="phantom: how many images to draw")
    rset.add_argument("--image-size", type=int, default=256, help="phantom: image side")
    rset.add_argument("--seed", type=int, default=0, help="seeds the choice of queries and candidates")
    from cxr_jax.cli import prepare

    prepare.add_arguments(_add_source(actions.add_parser(
        "prepare", help="build a source's TFDS dataset (ArrayRecord) in --data-dir for data.*.tfds_data_dir"),
        "splits to build, comma-separated (default: all of the source's)"))


def _data_spec(args, num_examples: int):
    """A data spec with the config defaults (configs/common.py) and this command's source, path and split."""
    from cxr_jax import config as config_lib

    spec = config_lib.configs_module("common").base("data").data.train
    spec.source, spec.path, spec.split, spec.num_examples = args.source, args.path, args.split, num_examples
    spec.on_error = getattr(args, "on_error", spec.on_error)
    return spec


def _data(args, config) -> int:
    del config
    from cxr_jax.data import sources

    if args.action == "list":
        for name, (_, description) in sources.SOURCES.items():
            print(f"{name:12s} {description}")
        return 0
    if args.action == "show":
        from cxr_jax.data import show

        spec = _data_spec(args, args.num if args.source == "phantom" else 0)
        data = sources.load(spec, image_size=args.image_size, seed=0)
        shown = show.contact_sheet(data, args.out, num=args.num, title=f"{args.source} ({args.split})")
        print(f"wrote {args.out}: {len(shown)} of {len(data.get('image', []))} images")
        return 0
    if args.action == "prepare":
        from cxr_jax.cli import prepare

        return prepare.run(args, _data_spec(args, 0))
    if args.action == "retrieval-set":
        from cxr_jax.data import retrieval_sets

        spec = _data_spec(args, args.num_examples)
        spec.stream = True  # Only the file names are needed.
        counts = retrieval_sets.write_set(sources.load(spec, image_size=args.image_size, seed=args.seed),
                                          args.source, args.out, num_queries=args.queries,
                                          num_candidates=args.candidates, seed=args.seed)
        print(f"wrote {args.out}: {args.candidates} candidates and {args.queries} image queries for each of "
              f"{', '.join(counts)}")
        return 0
    spec = _data_spec(args, args.num_examples)
    print(json.dumps(sources.describe(sources.load(spec, image_size=64, seed=0)), indent=2))
    return 0


def _add_landmarks(parser: argparse.ArgumentParser) -> None:
    _add_run(parser, "LD")  # --config.landmarks.* overrides the run's localisation settings.
    parser.add_argument("--template", required=True, help="the one labelled image")
    parser.add_argument("--template-landmarks", required=True, help="its structure,index,x,y CSV (its pixels)")
    parser.add_argument("images", nargs="+", help="image files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the CSVs and overlays")


def _landmarks(args, config) -> int:
    from cxr_jax.cli import landmarks

    records = landmarks.run(config, args.workdir, template=args.template, template_landmarks=args.template_landmarks,
                            images=args.images, out=args.out, which=args.checkpoint)
    print(f"wrote {args.out}: NAME.csv (structure,index,x,y in NAME's pixels) and NAME_landmarks.png for "
          f"{len(records)} images")
    return 0


def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", required=True, nargs="+", help="evaluated classifier runs (e.g. seeds)")
    parser.add_argument("--candidate", required=True, nargs="+", help="evaluated runs of the variant to test")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the patients")
    parser.add_argument("--seed", type=int, default=0, help="seeds the resampling")
    parser.add_argument("--out", help="also write the JSON result to this file")


def _compare(args, config) -> int:
    del config
    from cxr_jax.methods.classifier import evaluate as classifier

    result = classifier.compare(args.baseline, args.candidate, num_resamples=args.resamples, seed=args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    return 0


# name -> (help, add arguments, run(args, config or None) -> exit code). Commands with --config get it loaded
# (commands on a trained run, `_add_run`, the run's own config when --config is absent).
COMMANDS = {
    "train": ("train a method; resumes from the latest checkpoint in --workdir", _add_config, _train),
    "evaluate": ("evaluate a checkpoint (--checkpoint latest, best or a step); writes WORKDIR/eval/metrics.json",
                 _add_evaluate, _evaluate),
    "bench": ("time a method's compiled train step", _add_bench, _bench),
    "compare": ("AUC difference of two sets of evaluated classifier runs, with a patient-bootstrap interval",
                _add_compare, _compare),
    "data": ("list data sources; inspect a data set", _add_data, _data),
    "retrieve": ("rank images against a text query with a trained ConVIRT run", _add_retrieve, _retrieve),
    "decompose": ("a DGM run's synthesised normal, residue and saliency for images", _add_decompose, _decompose),
    "segment": ("a segment run's structure masks (e.g. lungs) for images", _add_segment, _segment),
    "landmarks": ("one-shot landmarks with an LD run: a template's points located in images", _add_landmarks,
                  _landmarks),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cxr-jax` and `python -m cxr_jax`."""
    parser = argparse.ArgumentParser(prog="cxr-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r} (config overrides look like --config.a.b=value)")
        overrides.append(item.removeprefix("--config."))

    from cxr_jax import config as config_lib
    from cxr_jax import parallel

    parallel.initialize()
    config = None
    try:
        if getattr(args, "config", None):
            config = config_lib.load(args.config, overrides)
        elif getattr(args, "config_from_run", False):  # Commands on a trained run default to its config.
            config = config_lib.load_run(args.workdir, overrides)
        elif overrides:
            parser.error(f"cxr-jax {args.command} takes no --config overrides")
    except config_lib.ConfigError as e:
        parser.exit(2, f"cxr-jax {args.command}: config error: {e}\n")
    from cxr_jax.data.sources import DataError

    try:
        return COMMANDS[args.command][2](args, config)
    except (config_lib.ConfigError, DataError, FileNotFoundError) as e:
        message = f"cxr-jax {args.command}: error: {e}\n"
    parser.exit(2, message)


def entry_point() -> None:
    """`cxr-jax` and `python -m cxr_jax`: `main`, and after a failure an exit that skips interpreter shutdown.

    After a failed tf.data pipeline, shutdown can abort the process ("terminate called without an active
    exception", 1 run in 3 to 6 under load) after the error message. What the command wrote is closed by then
    (the training loop closes its checkpoints and logs in its `finally`).
    """
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    if code:
        if not isinstance(code, int):  # SystemExit("message").
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    entry_point()
