"""`cxr-jax` command line: parses flags and calls library functions; nothing else lives here.

Each command is a `Command` in COMMANDS: its help, examples, a function adding its arguments, one running it and
optionally one announcing it before JAX is imported. What the user reads is in DESCRIPTION, EPILOG and there.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from cxr_jax.cli import console

DESCRIPTION = """\
Train, evaluate and apply chest X-ray models with JAX:
  DGM       disentangled generative model: a synthesised normal image and the abnormality residue
  ConVIRT   image-report contrastive pretraining: text-to-image retrieval, linear probes
  LD        local discrimination: landmarks located from one labelled template
beside a normal/abnormal classifier and a lung segmenter. A run lives in one directory (--workdir): its
config.json, checkpoints, metrics.jsonl, TensorBoard logs and evaluation."""

EPILOG = """\
examples:
  cxr-jax train --config configs/dgm.py:demo --workdir workdirs/dgm   # embedded phantom data, no download
  cxr-jax evaluate --workdir workdirs/dgm                             # metrics and figures in workdirs/dgm/eval
  cxr-jax decompose --workdir workdirs/dgm xray.png --out out/dgm     # the model on your own images

Configs are configs/<method>.py:<variant> (smoke, demo, paper and real-data variants, listed in each file);
any key can be overridden, e.g. --config.train.num_steps=500 --config.data.train.path=/data/nih.
`cxr-jax COMMAND --help` shows a command's options and an example."""

CONFIG_HELP = "config file and variant, e.g. configs/dgm.py:demo; override keys with --config.a.b=value"


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: `cxr-jax train: error: …; see `cxr-jax train --help``."""

    def error(self, message: str):
        """Exits 2 with `message` and where to look, without the usage block."""
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _add_config(parser: argparse.ArgumentParser, workdir: bool = True) -> None:
    parser.add_argument("--config", required=True, help=CONFIG_HELP)
    if workdir:
        parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, eval)")


def _checkpoint_steps(workdir: str | pathlib.Path) -> list[int]:
    """The finished checkpoints' steps under `W/checkpoints` (read without JAX or Orbax)."""
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _announce_train(args, config) -> None:
    """The first line of `train`, before JAX, TensorFlow and the method are imported (well within a second)."""
    if os.environ.get("JAX_PROCESS_ID", "0") != "0":
        return
    steps, total = _checkpoint_steps(args.workdir), config.train.num_steps
    what = f"{config.method} ({args.config})"
    if steps:
        console.status(f"resuming {what} in {args.workdir} at step {steps[-1]} of {total}")
    else:
        console.status(f"training {what} into {args.workdir}: {total} steps of batch {config.batch_size} at "
                       f"{config.image_size} px")


def _train(args, config) -> int:
    import jax

    start_step = (_checkpoint_steps(args.workdir) or [0])[-1]
    lead = jax.process_index() == 0
    if lead:  # Before TensorFlow, Orbax and the method are imported (10 s on a busy CPU).
        devices, platform = jax.device_count(), jax.devices()[0].platform.upper()
        hosts = f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
        console.status(f"loading data and compiling the {config.method} step on {devices} {platform} "
                       f"device{'s' if devices > 1 else ''}{hosts}…")

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
    if lead:
        for line in train_summary(config, args.workdir, start_step=start_step,
                                  seconds=time.perf_counter() - args.started):
            console.status(line)
    return 0


def train_summary(config, workdir: str | pathlib.Path, *, start_step: int, seconds: float) -> list[str]:
    """What `train` prints when it is done: steps, time, the last key metrics, where everything is, what next."""
    from cxr_jax import metrics, registry

    w = pathlib.Path(workdir)
    total = config.train.num_steps
    line = f"done: {config.method} at step {total} ({total - start_step} steps in {console.duration(seconds)})"
    records = metrics.read_jsonl(w / "metrics.jsonl") if (w / "metrics.jsonl").is_file() else []
    if records:
        line += "; " + metrics.format_metrics(records[-1], registry.get(config.method).key_metrics)
    steps = _checkpoint_steps(w)
    lines = [line, f"  checkpoints  {w / 'checkpoints'} (steps {', '.join(map(str, steps)) or 'none'})",
             f"  metrics      {w / 'metrics.jsonl'}"]
    if (w / "eval" / "history.jsonl").is_file():
        lines.append(f"  evaluations  {w / 'eval' / 'history.jsonl'}")
    if (w / "samples").is_dir():
        lines.append(f"  samples      {w / 'samples'}/STEP.png")
    lines += [f"  tensorboard  tensorboard --logdir {w / 'tensorboard'}", f"  config       {w / 'config.json'}",
              f"next: cxr-jax evaluate --workdir {w}"]
    return lines


def _checkpoint(text: str) -> str:
    """`--checkpoint`: latest, best or a step number."""
    if text in ("latest", "best") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected latest, best or a step number, got {text!r}")


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="latest", type=_checkpoint,
                        help="which checkpoint of the run: latest, best (by eval.best_metric) or a step number")


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    _add_run(parser, "")  # --config.data.eval.* (and the evaluators' keys) override the run's own config.


def _evaluate(args, config) -> int:
    from cxr_jax import runs

    written = console.Written(pathlib.Path(args.workdir) / "eval")
    result = runs.evaluate(config, args.workdir, which=args.checkpoint)
    print(json.dumps(result, indent=2, sort_keys=True))
    written.report(err=True)  # stdout is the JSON alone, for pipes.
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
    parser.add_argument("--profile", action="store_true",
                        help="also profile the timed steps: XLA's op time per step by category (convolutions "
                             "by role, matmuls, layout copies, ...)")


def _bench(args, config) -> int:
    from cxr_jax import bench

    if args.steps is not None:
        config.bench.num_steps = args.steps
    if args.warmup is not None:
        config.bench.warmup_steps = args.warmup
    if args.data:
        result = bench.run_data(config, num_batches=args.num_batches)
    else:
        result = bench.run(config, matmul_size=args.matmul_size, compile_only=args.compile_only,
                           profile=args.profile)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
        console.status(f"wrote {args.out}", err=True)
    if not args.data:
        print(bench.summary(result))
    if "ops" in result:
        from cxr_jax import profiling

        print(profiling.table(result["ops"]))
    return 0


def _add_run(parser: argparse.ArgumentParser, what: str) -> None:
    """--workdir of a trained run and an optional --config; without it `main` loads the run's own config."""
    parser.add_argument("--workdir", required=True, help=f"a trained {what + ' ' if what else ''}run")
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

    written = console.Written(args.out)
    result = retrieve.run(config, args.workdir, query=args.query, images=args.images, top_k=args.top_k, out=args.out,
                          which=args.checkpoint)
    for match in result["matches"]:
        print(f"{match['rank']:3d}  {match['score']:+.4f}  {match['file']}")
    written.report("matches.json: the ranking, matches.png: the top images")
    return 0


def _add_decompose(parser: argparse.ArgumentParser) -> None:
    _add_run(parser, "DGM")
    parser.add_argument("images", nargs="+", help="image files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the PNGs and JSONs")
    parser.add_argument("--lung-masks", help="lung masks: DIR/NAME.png or DIR/{left,right}_lung/NAME.png "
                        "(default: the whole image counts as lung)")


def _decompose(args, config) -> int:
    from cxr_jax.cli import decompose

    written = console.Written(args.out)
    records = decompose.run(config, args.workdir, images=args.images, out=args.out, lung_masks=args.lung_masks,
                            which=args.checkpoint)
    for record in records:
        best = max((c["score"] for c in record["components"]), default=0.0)
        print(f"{len(record['components']):3d} regions  max score {best:.3f}  {record['image']}")
    written.report("per image NAME: normal, residue, heat-map and saliency PNGs, NAME_residue.npy, NAME.json")
    return 0


def _add_segment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained segment run (configs/segment.py)")
    parser.add_argument("images", nargs="+", help="image files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the masks and overlays")
    _add_checkpoint(parser)


def _segment(args, config) -> int:
    from cxr_jax.cli import segment

    written = console.Written(args.out)
    records = segment.run(args.workdir, images=args.images, out=args.out, which=args.checkpoint)
    for record in records:
        areas = "  ".join(f"{k.removeprefix('area_')} {v:.3f}" for k, v in record.items() if k.startswith("area_"))
        print(f"{areas}  {record['image']}")
    written.report("per image NAME: NAME_<structure>.png masks and NAME_overlay.png, at its original size")
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
        written = console.Written(args.out)
        counts = retrieval_sets.write_set(sources.load(spec, image_size=args.image_size, seed=args.seed),
                                          args.source, args.out, num_queries=args.queries,
                                          num_candidates=args.candidates, seed=args.seed)
        written.report(f"{args.candidates} candidates and {args.queries} image queries for each of "
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

    written = console.Written(args.out)
    records = landmarks.run(config, args.workdir, template=args.template, template_landmarks=args.template_landmarks,
                            images=args.images, out=args.out, which=args.checkpoint)
    written.report(f"{len(records)} images; per image NAME: NAME.csv (structure,index,x,y in NAME's pixels) and "
                   "NAME_landmarks.png")
    return 0


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="directory for the runs (W/dgm, W/convirt, W/ld) and "
                        "W/index.html; rerun to continue")
    parser.add_argument("--methods", default="dgm,convirt,ld", help="comma-separated subset of dgm,convirt,ld")


def _announce_demo(args, config) -> None:
    del config
    from cxr_jax import demo

    args.demo_methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    demo.configs(args.demo_methods)  # A bad --methods is a one-line error before anything is imported.
    console.status(f"demo of {', '.join(args.demo_methods)} on the embedded phantom into {args.workdir} "
                   "(about 10 minutes on 2 CPU cores)")


def _demo(args, config) -> int:
    del config
    from cxr_jax import demo

    try:
        results = demo.run(args.workdir, args.demo_methods, status=console.status)
    except demo.DemoError as e:
        print(f"cxr-jax demo: error: {e}", file=sys.stderr)
        return 1
    console.status(f"done in {console.duration(time.perf_counter() - args.started)}; method vs baseline:")
    for line in demo.summary(results):
        console.status(f"  {line}")
    console.status(f"open {pathlib.Path(args.workdir) / 'index.html'}")
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
        console.status(f"wrote {args.out}", err=True)
    return 0


class Command(NamedTuple):
    """One `cxr-jax` command."""

    help: str  # One line in `cxr-jax --help`.
    examples: str  # Shown by `cxr-jax COMMAND --help`.
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # run(args, config or None) -> exit code. Commands with --config get it loaded (commands on a trained run,
    # `_add_run`, the run's own config when --config is absent).
    run: Callable[..., int]
    # announce(args, config): printed once the config is loaded, before JAX is imported (a second at most).
    announce: Callable[..., None] | None = None


COMMANDS = {
    "demo": Command(
        "train and evaluate DGM, ConVIRT and LD on the embedded phantom beside their baselines; W/index.html",
        "cxr-jax demo --workdir workdirs/demo\n"
        "cxr-jax demo --workdir workdirs/demo --methods dgm,ld",
        _add_demo, _demo, _announce_demo),
    "train": Command(
        "train a method; rerun the same command to resume from the latest checkpoint",
        "cxr-jax train --config configs/dgm.py:demo --workdir workdirs/dgm\n"
        "cxr-jax train --config configs/classifier.py:nih1000 --workdir workdirs/nih --config.train.num_steps=500",
        _add_config, _train, _announce_train),
    "evaluate": Command(
        "evaluate a trained run's checkpoint; writes WORKDIR/eval/metrics.json and figures",
        "cxr-jax evaluate --workdir workdirs/dgm\n"
        "cxr-jax evaluate --workdir workdirs/ld --checkpoint best --config.data.eval.source=jsrt "
        "--config.data.eval.path=../shared/data/jsrt",
        _add_evaluate, _evaluate),
    "bench": Command(
        "time a method's compiled train step (or, with --data, its input pipeline)",
        "cxr-jax bench --config configs/ld.py:demo --steps 5 --out ld_bench.json",
        _add_bench, _bench),
    "compare": Command(
        "AUC difference of two sets of evaluated classifier runs, with a patient-bootstrap interval",
        "cxr-jax compare --baseline workdirs/cls_s0 workdirs/cls_s1 --candidate workdirs/res_s0 workdirs/res_s1",
        _add_compare, _compare),
    "data": Command(
        "list the data sources; summarise a data set or draw a contact sheet of it",
        "cxr-jax data list\n"
        "cxr-jax data inspect nih1000 --path ../shared/data/nih1000\n"
        "cxr-jax data show jsrt --path ../shared/data/jsrt --out jsrt.png",
        _add_data, _data),
    "retrieve": Command(
        "rank images against a report text with a trained ConVIRT run",
        'cxr-jax retrieve --workdir workdirs/convirt --query "right pleural effusion" '
        "--images ../shared/data/covid --out out/retrieve",
        _add_retrieve, _retrieve),
    "decompose": Command(
        "a DGM run's synthesised normal, residue and salient regions for your images",
        "cxr-jax decompose --workdir workdirs/dgm ../shared/data/jsrt/images --out out/decompose",
        _add_decompose, _decompose),
    "segment": Command(
        "a segment run's structure masks (e.g. lungs) for your images",
        "cxr-jax segment --workdir workdirs/segment xray.png --out out/segment",
        _add_segment, _segment),
    "landmarks": Command(
        "locate a template's landmarks in your images with an LD run (one labelled image is enough)",
        "cxr-jax landmarks --workdir workdirs/ld --template t.png --template-landmarks t.csv --out out/landmarks "
        "images/",
        _add_landmarks, _landmarks),
}


class _TopFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the commands one per line under `commands:`, without argparse's `COMMAND` heading line."""

    def _format_action(self, action):
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(a) for a in action._get_subactions())
        return super()._format_action(action)


def _verbose_flag(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="show the libraries' warnings (absl, Orbax, TensorFlow) and errors' tracebacks")


def parser() -> Parser:
    """The `cxr-jax` argument parser (building it imports nothing beyond the standard library)."""
    top = Parser(prog="cxr-jax", description=DESCRIPTION, epilog=EPILOG, formatter_class=_TopFormatter)
    _verbose_flag(top, False)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        examples = command.examples.splitlines()
        epilog = ("examples:\n" if len(examples) > 1 else "example:\n") + "\n".join(f"  {e}" for e in examples)
        child = sub.add_parser(name, help=command.help, description=command.help[0].upper() + command.help[1:] + ".",
                               epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(child)
        _verbose_flag(child, argparse.SUPPRESS)  # SUPPRESS: `cxr-jax --verbose train` stays verbose.
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cxr-jax` and `python -m cxr_jax`."""
    started = time.perf_counter()
    top = parser()
    args, rest = top.parse_known_args(argv)
    args.started = started
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            top.error(f"unrecognized argument {item!r} (config overrides look like --config.a.b=value)")
        overrides.append(item.removeprefix("--config."))
    prog = f"cxr-jax {args.command}"
    console.quiet_libraries(args.verbose)

    from cxr_jax import config as config_lib

    command = COMMANDS[args.command]
    config = None
    try:
        if getattr(args, "config", None):
            config = config_lib.load(args.config, overrides)
        elif getattr(args, "config_from_run", False):  # Commands on a trained run default to its config.
            config = config_lib.load_run(args.workdir, overrides)
        elif overrides:
            top.error(f"{args.command} takes no --config overrides")
        if command.announce is not None:
            command.announce(args, config)
    except config_lib.ConfigError as e:
        _fail(args, 2, f"{prog}: config error: {e}")

    from cxr_jax import parallel

    parallel.initialize()
    try:
        return command.run(args, config)
    except KeyboardInterrupt:
        _fail(args, 130, f"{prog}: interrupted")
    except Exception as e:
        from cxr_jax.data.sources import DataError  # Imported here: it loads SciPy, a second before the first line.

        if not isinstance(e, (config_lib.ConfigError, DataError, FileNotFoundError)):
            raise
        _fail(args, 2, f"{prog}: error: {e}")


def _fail(args, code: int, message: str):
    """Exits with `code` after `message` on stderr (one line); with --verbose, the traceback first."""
    if args.verbose:
        import traceback

        traceback.print_exc()
    sys.stdout.flush()
    print(" ".join(message.split()), file=sys.stderr, flush=True)
    raise SystemExit(code)


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
