"""`servetrace workload gen KIND --out FILE`: write a replay workload (JSONL)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from tracer.replay.workload import GENERATORS

    parser = subparsers.add_parser("workload", help="generate replay workloads")
    sub = parser.add_subparsers(dest="workload_command", metavar="ACTION")
    gen = sub.add_parser("gen", help="write a generated workload as JSONL")
    gen.add_argument("kind", choices=sorted(GENERATORS), help="which workload shape")
    gen.add_argument("--out", required=True, help="output JSONL file")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("-n", "--num-requests", type=int, default=None, help="number of requests (where the kind has one)")
    gen.set_defaults(func=run)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    import inspect

    from tracer.replay.workload import GENERATORS, generate, save_sidecar_config, save_workload

    kwargs = {"seed": args.seed}
    if args.num_requests is not None:
        if args.num_requests < 1:
            raise ValueError("--num-requests must be at least 1")
        if "num_requests" not in inspect.signature(GENERATORS[args.kind]).parameters:
            raise ValueError(f"workload kind {args.kind!r} has no request count; drop -n")
        kwargs["num_requests"] = args.num_requests
    requests = generate(args.kind, **kwargs)
    path = save_workload(requests, args.out)
    print(f"wrote {len(requests)} requests ({args.kind}) to {path}")
    sidecar = save_sidecar_config(args.kind, path)
    if sidecar is not None:
        print(f"wrote the replay config this shape needs to {sidecar} (`servetrace replay {path}` reads it)")
    return 0
