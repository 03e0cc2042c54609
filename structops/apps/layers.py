"""``structops layers``: the certified spectrum of every layer of ResNet-18 / MobileNetV2 shaped networks.

Prints the table of :func:`structops.layer_spectra` and writes
``layers.json``, ``layers.csv`` and ``layers.png`` to ``--out``. The networks
(:mod:`structops.interop.networks`) are built in-repo with random Kaiming
weights; torch is needed (``pip install 'structops[torch]'``).
"""

from __future__ import annotations

import os

from .args import CommandError, arg, command, int_at_least, output_dir


@command(
    "layers",
    "certified sigma_max, sigma_min and cond of every conv / linear layer of ResNet-18 or MobileNetV2 (torch needed)",
    arg("--model", choices=["resnet18", "mobilenetv2"], default="resnet18", help="the network (default resnet18)"),
    arg("--size", type=int_at_least(8, at_most=4096), default=32, help="input image side (default 32)"),
    arg("--smallest-limit", type=int_at_least(0), default=20000,
        help="certify sigma_min of layers with at most this many unknowns, bound the others (default 20000)"),
    arg("--seed", type=int_at_least(0), default=0, help="seed of the Kaiming initialisation (default 0)"),
    arg("--out", metavar="DIR", type=output_dir, default="layers", help="output folder (default ./layers)"),
)
def layers(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CommandError("structops layers needs PyTorch: pip install 'structops[torch]'") from None
    import structops
    from structops.interop.networks import NETWORKS

    model = NETWORKS[args.model](seed=args.seed)
    print(f"structops {structops.__version__} layers: {args.model}, input 3x{args.size}x{args.size}, "
          f"sigma_min certified up to {args.smallest_limit} unknowns")
    rep = structops.layer_spectra(model, (3, args.size, args.size), smallest_limit=args.smallest_limit)
    print(rep.table())
    rep.write_json(os.path.join(args.out, "layers.json"))
    rep.write_csv(os.path.join(args.out, "layers.csv"))
    rep.plot(os.path.join(args.out, "layers.png"))
    print(f"{len(rep.layers)} layers in {rep.seconds:.1f} s; wrote layers.json, layers.csv, layers.png to {args.out}")
    return 0
