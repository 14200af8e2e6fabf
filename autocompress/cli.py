"""Command line: `autocompress run CONFIG.yaml`, `autocompress demo`, and the Kubeflow verbs."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from .errors import AutoCompressError
from .version import __version__


def _print_result(summary: dict) -> None:
    from .summary import comparison_rows, render_table

    print()
    print(render_table(comparison_rows(summary)))
    status = "met" if summary["target_met"] else "NOT met"
    print(f"\nbudget: {summary.get('budget')} -> target {status}; {summary['seconds']:.1f} s, "
          f"peak RSS {summary['peak_rss_bytes'] / (1 << 20):.0f} MiB")
    print(f"model:   {summary['model_dir']}")
    save_dir = summary.get("save_dir")
    if save_dir:
        print(f"summary: {save_dir}/summary.json\nreport:  {save_dir}/report.md")


def cmd_run(args) -> int:
    from .runner import run_config

    summary = run_config(args.config, save_dir=args.save_dir, progress=not args.quiet)
    _print_result(summary)
    return 0


def cmd_demo(args) -> int:
    from .demo.run import run_demo

    summary = run_demo(save_dir=args.save_dir, progress=not args.quiet)
    _print_result(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autocompress {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="compress a model as described by a YAML run config")
    run.add_argument("config", help="YAML file: Model, Data, Eval, Device, SaveDir + strategy configs")
    run.add_argument("--save-dir", help="overrides SaveDir")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="compress the bundled digits CNN (real scikit-learn data), end to end")
    demo.add_argument("--save-dir", default="./autocompress-demo", help="where to write the results")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except AutoCompressError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; the best model found so far (if any) and the trial table are in the save dir",
              file=sys.stderr)
        return 130
    except Exception:  # a bug, not a user error: show everything
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
