"""Command line: `autocompress run CONFIG.yaml`, `autocompress demo`, and the Kubeflow verbs."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from .errors import AutoCompressError
from .version import __version__


def _print_result(summary: dict, paths: bool = True) -> None:
    from .summary import comparison_rows, render_table

    print()
    print(render_table(comparison_rows(summary)))
    status = "met" if summary["target_met"] else "NOT met"
    print(f"\nbudget: {summary.get('budget')} -> target {status}; {summary['seconds']:.1f} s, "
          f"peak RSS {summary['peak_rss_bytes'] / (1 << 20):.0f} MiB")
    if not paths:  # the pipeline runner already said where everything is
        return
    print(f"model:   {summary['model_dir']}")
    save_dir = summary.get("save_dir")
    if save_dir:
        print(f"summary: {save_dir}/summary.json\nreport:  {save_dir}/report.md")


def cmd_run(args) -> int:
    if args.in_process:
        from .runner import run_config

        summary = run_config(args.config, save_dir=args.save_dir, progress=not args.quiet)
        if summary.get("mode") == "auto":  # auto mode's candidates table; exit 3 when the target is not met
            code = _auto_result(summary)
        else:
            _print_result(summary)
            code = 0
        if args.publish:
            _publish(summary, args.publish)
        return code
    from .kfp.local_run import run_local

    run = run_local(args.config, save_dir=args.save_dir, publish_uri=args.publish, runner=args.runner,
                    progress="verbose" if args.verbose_stages else not args.quiet)
    if run.summary.get("mode") == "auto":
        return _auto_result(run.summary)
    _print_result(run.summary, paths=args.quiet)
    return 0


def _auto_result(summary: dict) -> int:
    """Auto mode's terminal table and where the results are; the exit code (3: target not met)."""
    from .auto.report import terminal_table

    print()
    print(terminal_table(summary))
    print(f"\nmodel:   {summary.get('model_dir')}\nreport:  {summary['save_dir']}/report.html "
          f"(and report.md, summary.json)")
    return 0 if summary["target_met"] else 3


def _publish(summary: dict, uri: str) -> None:
    """The deliverable (model, summary, report) to an object-store URI or folder, as the pipeline's
    export stage does."""
    from pathlib import Path

    from .storage import publish

    save_dir = Path(summary["save_dir"])
    base = uri.rstrip("/")
    if summary.get("model_dir"):  # auto mode without a finished candidate has none
        publish(summary["model_dir"], f"{base}/model")
    for name in ("summary.json", "report.md", "report.html"):  # report.html: auto mode's
        if (save_dir / name).exists():
            publish(save_dir / name, f"{base}/{name}")
    print(f"published: {base}")


def cmd_compile(args) -> int:
    if args.k8s:
        from .kfp.compile import compile_k8s

        for path in compile_k8s(args.k8s_dir, image_repository=args.image_repository):
            print(path)
        return 0
    from .kfp.compile import compile_pipelines

    for path in compile_pipelines(args.output_dir, image_repository=args.image_repository):
        print(path)
    return 0


def _cluster_options(args) -> dict:
    return {"host": args.host, "token": args.token, "namespace": args.namespace, "experiment": args.experiment,
            "gpu": not args.cpu, "publish_uri": args.publish, "object_store_secret": args.object_store_secret,
            "image_repository": args.image_repository}


def cmd_submit(args) -> int:
    from .kfp.cluster import submit

    result = submit(args.config, run_name=args.run_name, **_cluster_options(args))
    print(json.dumps(result, indent=2))
    return 0


def cmd_schedule(args) -> int:
    if args.sync:  # GitOps: reconcile every recurring run to a recurring-runs.yaml
        from .kfp.gitops import sync

        sync(args.sync, host=args.host, token=args.token, namespace=args.namespace, dry_run=args.dry_run,
             removed=args.removed)
        return 0
    if not args.config or not args.cron:
        args.parser.error("schedule needs CONFIG and --cron (or --sync FILE)")
    from .kfp.cluster import schedule

    result = schedule(args.config, args.cron, job_name=args.job_name, **_cluster_options(args))
    print(json.dumps(result, indent=2))
    return 0


def optimize_config(args) -> dict:
    """The run config `autocompress optimize` describes: the model, the data splits, the budget and
    the Auto section (the same validation as `Auto:` in a run YAML)."""
    from pathlib import Path

    from .errors import ConfigError

    splits = {name: getattr(args, name) for name in ("train", "eval", "test", "calib")}
    if args.data:  # a folder with one Dataset folder per split
        for name in splits:
            if splits[name] is None and (Path(args.data) / name).is_dir():
                splits[name] = str(Path(args.data) / name)
    for name in ("train", "eval"):
        if splits[name] is None:
            where = f"{args.data}/{name}/ does not exist" if args.data else "no --data folder given"
            raise ConfigError(f"optimize needs {name} data: pass --{name} DIR or --data DIR holding {name}/ "
                              f"(a Dataset folder with dataset.yaml); {where}")
    auto = {"target": args.target, "time_budget": args.time_budget}
    for key in ("batch_size", "candidates", "prune_ratios", "epochs", "ptq_trials"):
        value = getattr(args, key)
        if value is not None:
            auto[key] = value
    if args.no_resume:
        auto["resume"] = False
    if args.no_refine:
        auto["refine"] = False
    return {"Model": {"model_dir": args.model_dir, "model_filename": args.model_filename,
                      "params_filename": args.params_filename},
            "Data": {**{k: v for k, v in splits.items() if v}, "batch_size": args.data_batch_size},
            "Eval": {"metric": args.metric, "max_drop": args.max_drop, "drop_type": args.drop_type},
            "Device": args.device, "SaveDir": args.save_dir, "Auto": auto}


def cmd_optimize(args) -> int:
    from .config import load_run_config
    from .runner import run_config

    return _auto_result(run_config(load_run_config(optimize_config(args)), progress=not args.quiet))


def cmd_demo(args) -> int:
    from .demo.run import run_demo

    return _auto_result(run_demo(save_dir=args.save_dir, progress=not args.quiet))


def cmd_convert(args) -> int:
    """`autocompress convert --to pir`: a legacy .pdmodel inference model as a Paddle 3 PIR .json one."""
    from .model_io import read_metadata
    from .program.convert import convert_to_pir

    out = convert_to_pir(args.model_dir, args.out_dir, args.model_filename, args.params_filename)
    check = (read_metadata(out.model_dir) or {}).get("conversion", {})
    for path in out.files():
        print(path)
    diff, tol = check.get("max_abs_diff", float("nan")), check.get("tolerance", float("nan"))
    print(f"same outputs in {check.get('runtime')}: max |legacy - pir| = {diff:.3g} (tolerance {tol:.3g}) "
          f"on {check.get('inputs')}")
    for warning in check.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_export_onnx(args) -> int:
    """`autocompress export-onnx`: the model as OUT_DIR/model.onnx (FP32, or int8 as QDQ), checked in ONNX Runtime."""
    import numpy as np

    from .errors import DataError
    from .model_io import read_metadata
    from .program.to_onnx import describe_check, export_onnx

    feed = None
    if args.feed:
        try:
            with np.load(args.feed, allow_pickle=False) as z:
                feed = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise DataError(f"--feed {args.feed}: not a readable .npz of input arrays ({err}); write one with "
                            "numpy.savez(path, x=array) keyed by the model's input names") from None
    path = export_onnx(args.model_dir, args.out_dir, args.model_filename, args.params_filename, feed=feed,
                       opset=args.opset, placement=args.placement)
    check = (read_metadata(path.parent) or {}).get("onnx", {}).get("check", {})
    print(path)
    print(f"checked in {check.get('runtime')} against {check.get('reference')}: {describe_check(check)}")
    if not check.get("enforced", True):
        print("warning: int8 model checked on a random feed only; pass --feed x.npz (real inputs) for an enforced "
              "check", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autocompress {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="compress a model as described by a YAML run config (runs the strategy's "
                                     "pipeline locally with the KFP local runner)")
    run.add_argument("config", help="YAML file: Model, Data, Eval, Device, SaveDir + strategy configs")
    run.add_argument("--save-dir", help="overrides SaveDir")
    run.add_argument("--in-process", action="store_true",
                     help="run the same stages in this process instead of one process per stage through the "
                          "KFP local runner (notebooks, PaddleJob ranks, no kfp needed)")
    run.add_argument("--publish", metavar="URI", help="also publish the final model + card to s3://... or minio://...")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--verbose-stages", action="store_true", help="echo every pipeline stage's full log")
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="subprocess: every stage a process of this Python (default); docker: every stage a "
                          "container of the pipeline's image, run as the pods run (build it: python images/build.py)")
    run.set_defaults(func=cmd_run)

    compile_ = sub.add_parser("compile", help="write the pipelines' IR YAML (for the Kubeflow UI) to a folder")
    compile_.add_argument("--output-dir", default="pipelines/compiled")
    compile_.add_argument("--image-repository", help="component image repository (default: the released image)")
    compile_.add_argument("--k8s", action="store_true",
                          help="write KFP Kubernetes-native Pipeline + PipelineVersion resources (this release's "
                               "version) as a kustomize component instead")
    compile_.add_argument("--k8s-dir", default="manifests/components/pipeline-versions")
    compile_.set_defaults(func=cmd_compile)

    for verb, helptext, func in (("submit", "upload the pipeline as a new version and start a run", cmd_submit),
                                 ("schedule", "create or replace a recurring run (scheduled retraining)",
                                  cmd_schedule)):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("config", nargs="?" if verb == "schedule" else None,
                       help="YAML run config whose Model/Data are s3:// or minio:// URIs")
        p.add_argument("--host", help="KFP endpoint (default: $KFP_HOST)")
        p.add_argument("--token", help="bearer token (default: $KFP_TOKEN)")
        p.add_argument("--namespace", help="Kubeflow namespace (default: $KFP_NAMESPACE or kubeflow)")
        p.add_argument("--experiment", default="autocompress")
        p.add_argument("--cpu", action="store_true", help="use the CPU pipeline variant (no GPU requests)")
        p.add_argument("--publish", metavar="URI", help="where the export stage publishes the final model")
        p.add_argument("--object-store-secret", help="Kubernetes Secret with the object-store credentials "
                                                     "(default: mlpipeline-minio-artifact)")
        p.add_argument("--image-repository", help="component image repository")
        if verb == "submit":
            p.add_argument("--run-name")
        else:
            p.add_argument("--cron", help="cron expression, 5 or 6 fields (e.g. '0 3 * * *'); required without --sync")
            p.add_argument("--job-name", help="recurring run name; an existing one with this name is replaced")
            p.add_argument("--sync", metavar="FILE", help="reconcile KFP's recurring runs to a recurring-runs.yaml "
                                                         "(create, replace changed, disable/delete removed)")
            p.add_argument("--dry-run", action="store_true", help="with --sync: print the plan, change nothing")
            p.add_argument("--removed", choices=["disable", "delete"],
                           help="with --sync: what happens to our runs no longer in the file (default: the file's "
                                "`removed:`, else disable)")
            p.set_defaults(parser=p)
        p.set_defaults(func=func)

    opt = sub.add_parser("optimize", help="auto mode: the fastest model within the accuracy budget on your "
                                          "deployment target, searched across strategies (exit 3: target not met)")
    opt.add_argument("model_dir", help="folder holding the inference model (never modified)")
    opt.add_argument("--model-filename")
    opt.add_argument("--params-filename")
    opt.add_argument("--data", help="folder with train/, eval/ and optionally test/ and calib/ Dataset folders")
    for split, what in (("train", "training (and calibration) data"), ("eval", "the data candidates are selected on"),
                        ("test", "held-out data for the report, never used to select"),
                        ("calib", "calibration data (default: train)")):
        opt.add_argument(f"--{split}", metavar="DIR", help=f"Dataset folder: {what}")
    opt.add_argument("--data-batch-size", type=int, default=32, help="loader batch size (default 32)")
    opt.add_argument("--metric", default="top1", help="top1 | top5 | fidelity | package.module:function")
    opt.add_argument("--max-drop", type=float, default=0.01, help="accuracy budget (default 0.01)")
    opt.add_argument("--drop-type", choices=["absolute", "relative"], default="absolute")
    opt.add_argument("--target", default="onednn-int8", help="paddle-cpu | onednn-int8 | openvino | gpu")
    opt.add_argument("--batch-size", type=int, help="deployment batch (default: the eval data's batch)")
    opt.add_argument("--time-budget", default="30m", help="e.g. 600, 90s, 30m, 2h (default 30m)")
    opt.add_argument("--candidates", nargs="+", help="kinds to try: ptq prune prune+ptq qat asp sparse "
                                                     "(default: those that can pay on the target)")
    opt.add_argument("--prune-ratios", nargs="+", type=float, help="channel-pruning ratios (default 0.25 0.5)")
    opt.add_argument("--epochs", type=int, help="training epochs per training candidate (default 3)")
    opt.add_argument("--ptq-trials", type=int, help="trials of the PTQ search (default 8)")
    opt.add_argument("--device", default="cpu")
    opt.add_argument("--save-dir", default="./autocompress-optimize")
    opt.add_argument("--no-resume", action="store_true", help="rerun candidates already finished in the save dir")
    opt.add_argument("--no-refine", action="store_true",
                     help="run only the planned candidates (no extra pruning ratios with the time left)")
    opt.add_argument("--quiet", action="store_true", help="no progress output")
    opt.set_defaults(func=cmd_optimize)

    demo = sub.add_parser("demo", help="auto mode on a digits CNN (real scikit-learn data): the fastest model within "
                                     "1 point of top-1, end to end in about a minute")
    demo.add_argument("--save-dir", default="./autocompress-demo", help="where to write the results")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser("convert", help="convert a legacy .pdmodel inference model to Paddle 3's PIR .json "
                                             "format, checked to give the same outputs in Paddle Inference")
    convert.add_argument("--to", required=True, choices=["pir"], help="the target format")
    convert.add_argument("model_dir", help="folder holding the legacy model (never modified)")
    convert.add_argument("out_dir", help="where to write <stem>.json + <stem>.pdiparams")
    convert.add_argument("--model-filename", help="model file in MODEL_DIR when it holds several")
    convert.add_argument("--params-filename", help="params file in MODEL_DIR when it holds several")
    convert.set_defaults(func=cmd_convert)

    onnx = sub.add_parser("export-onnx", help="export the model (FP32, or int8 as QDQ) to ONNX, checked against "
                                              "Paddle Inference in ONNX Runtime (pip install 'autocompress[onnx]')")
    onnx.add_argument("model_dir", help="folder holding the Paddle inference model, .pdmodel or PIR .json (never modified)")
    onnx.add_argument("out_dir", help="where to write model.onnx + autocompress.json (the check)")
    onnx.add_argument("--model-filename", help="model file in MODEL_DIR when it holds several")
    onnx.add_argument("--params-filename", help="params file in MODEL_DIR when it holds several")
    onnx.add_argument("--feed", metavar="NPZ", help="real sample inputs (.npz keyed by input name) for the check; "
                                                  "default: random, batch 2")
    onnx.add_argument("--opset", type=int, default=13, help="minimum ONNX opset (default 13; raised where needed)")
    from .program.to_onnx import PLACEMENTS

    onnx.add_argument("--placement", choices=PLACEMENTS, default="onnxruntime",
                      help="int8 models: whose int8 kernels the QuantizeLinear/DequantizeLinear pairs are placed for "
                           "(onnxruntime: paddle2onnx's placement; openvino: dense and transposed convs and "
                           "matmuls only)")
    onnx.set_defaults(func=cmd_export_onnx)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # our own INFO lines only; libraries (kfp, paddle) speak up at WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("autocompress").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except AutoCompressError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; the best model found so far (if any) and the trial table are in the save dir",
              file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: show everything (a full disk is no bug)
        from .atomic import disk_full

        full = disk_full(err, getattr(err, "filename", None) or ".")
        if full is not None:
            print(f"error: {full}", file=sys.stderr)
            return full.exit_code
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
