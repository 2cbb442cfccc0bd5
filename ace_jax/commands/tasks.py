"""`ace-jax tasks list | prepare | headroom | import-mlebench DIR`: the MLE tasks on disk."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=None, help="tasks directory (default: $ACE_JAX_HOME/tasks or ~/.cache/ace-jax/tasks)")
    parser.add_argument("--suite", default="core", choices=("core", "contrast"),
                        help="built-in suite: core (the demo's tasks) or contrast (tasks whose best answer depends "
                             "on the task; default dir $ACE_JAX_HOME/tasks-contrast)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="print task ids and their split (train / heldout); prepares built-ins on first use")
    prep = sub.add_parser("prepare", help="build the built-in tasks from scikit-learn datasets")
    prep.add_argument("--force", action="store_true", help="rebuild even tasks that are current")
    prep.add_argument("--only", nargs="+", default=None, metavar="ID", help="prepare only these built-in tasks")
    sub.add_parser("headroom", help="per built-in task: q of its reference specs, of a default spec and of the medals")
    imp = sub.add_parser("import-mlebench", help="convert competitions prepared by mle-bench")
    imp.add_argument("data_dir", metavar="DIR", help="mle-bench data directory (<DIR>/<id>/prepared/{public,private})")
    imp.add_argument("--competitions", default=None,
                     help="mle-bench's competitions directory (<C>/<id>/config.yaml, description.md, leaderboard.csv); "
                          "default: look in DIR/<id>/")
    imp.add_argument("--split", default="heldout", choices=("train", "heldout"), help="split of the imported tasks")


def run(args: argparse.Namespace) -> int:
    from rollout.env.prepare import ensure_tasks, prepare_builtin
    from rollout.env.suites import get_suite
    from rollout.env.tasks import default_tasks_dir

    suite = get_suite(args.suite)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.action == "list":
        for task_id, task in ensure_tasks(args.dir, progress=progress, suite=suite.name).items():
            print(f"{task_id}\t{task.config.split}")
        return 0
    if args.action == "prepare":
        tasks = prepare_builtin(args.dir, ids=args.only, force=args.force, progress=progress, suite=suite.name)
        print(f"{len(tasks)} tasks in {args.dir or suite.default_dir()}")
        return 0
    if args.action == "headroom":
        from rollout.env.headroom import headroom_table, one_spec_for_all, one_spec_lines, task_headroom
        tasks = ensure_tasks(args.dir, progress=progress, suite=suite.name)
        print(headroom_table([task_headroom(tasks[b.id], b.references) for b in suite.tasks if b.id in tasks]))
        print("\n" + one_spec_lines(one_spec_for_all(tasks.values())))
        print(one_spec_lines(one_spec_for_all(tasks.values(), by_kind=True)))
        return 0
    from rollout.env.mlebench_import import import_mlebench

    report = import_mlebench(args.data_dir, default_tasks_dir(args.dir), args.competitions, args.split)
    for comp in report.converted:
        print(f"converted\t{comp}")
    for comp, reason in report.skipped.items():
        print(f"skipped\t{comp}\t{reason}")
    print(f"{len(report.converted)} converted, {len(report.skipped)} skipped", file=sys.stderr)
    return 0 if report.converted or not report.skipped else 1
