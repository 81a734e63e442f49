"""`python -m bench list`: methods, datasets, backbones and experiments."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="all",
                        choices=("all", "methods", "datasets", "backbones", "experiments", "settings"),
                        help="what to list (settings: every parameter of every method)")


def execute(args: argparse.Namespace) -> int:
    from bench.data.loading import available_datasets, load_card
    from bench.network.backbones import BACKBONES
    from bench.runs.spec import method_params
    from bench.sweeps.experiments import available_experiments, load_experiment
    from methods import available_methods, get_method, method_source, plugin_problems

    if args.what in ("all", "methods"):
        print("methods:")
        width = max(map(len, available_methods()), default=10)  # one column, however long a name
        for name in available_methods():
            source = method_source(name)
            origin = "" if source.builtin else f"  [{source.describe()}]"
            print(f"  {name:{width}s} {get_method(name).summary}{origin}")
            unknowns = get_method(name).reconstruction()
            if unknowns:  # rebuilt from abstracts or a predecessor's code: name what is not read
                print(f"  {'':{width}s} reconstruction: {', '.join(unknowns)} (what was assumed: "
                      f"`bench list settings`)")
        for problem in plugin_problems():
            print(f"  warning: {problem}")
    if args.what in ("all", "datasets"):
        print("datasets:")
        for name in available_datasets():
            card = load_card(name)
            kind = ", multi-label" if card.multi_label else ""
            precision = f", P@{card.precision_at}" if card.precision_at else ""
            print(f"  {name:20s} {card.title} ({card.num_classes} classes{kind}{card.size_text()}, "
                  f"mAP@{card.map_at or 'all'}{precision})")
    if args.what in ("all", "backbones"):
        print("backbones:")
        for name, text in BACKBONES.items():
            print(f"  {name:10s} {text}")
    if args.what in ("all", "experiments"):
        print("experiments:")
        for name in available_experiments():
            experiment = load_experiment(name)
            print(f"  {name:24s} {experiment.description.splitlines()[0] if experiment.description else ''}")
    if args.what == "settings":
        for name in available_methods():
            method = get_method(name)
            print(f"{name}:")
            for key, param in method_params(method).items():
                native = f" (native: {method.native[key]})" if key in method.native else ""
                choices = f" [{'|'.join(map(str, param.choices))}]" if param.choices else ""
                print(f"  {key:22s} {param.default!r}{native}{choices}  {param.help}")
            for piece, assumed in method.reconstructed.items():
                print(f"  {'(' + piece + ')':22s} reconstruction: {assumed}")
            for key, param in method.params.items():
                if param.source.startswith(("reconstruction:", "deviation:")):
                    print(f"  {'':22s} {key}: {param.source}")
    return 0
