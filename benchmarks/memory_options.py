"""Compiled memory of one train step with and without rematerialisation and layer scan.

For each of the four (remat, scan) combinations, builds the trainer (`vitscale.build.trainer`,
the same jitted step as a run uses: forward, backward, optimizer update, state donated), lowers
the step from abstract shapes (nothing is allocated) and reads XLA's
`compiled.memory_analysis()`: argument bytes (state + batch), output bytes, bytes aliased
between them (the donated state), temporaries (activations kept for the backward pass,
gradients, workspace) and the generated code. "peak" is arguments + outputs - aliased + temps,
the live footprint of the step; on a mesh every number is per device.

Usage: .venv/bin/python benchmarks/memory_options.py [--variant S/16] [--image-size 224] [--batch 8]
                                                  [--optimizer adafactor] [--dtype float32] [--mesh 1 1]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from vitscale import loop, optim, sharding
from vitscale.models import vit

MiB = 2**20


def measure(
    variant: str,
    image_size: int,
    channels: int,
    batch: int,
    classes: int,
    optimizer: str,
    dtype: str,
    remat: bool,
    scan: bool,
    mesh,
) -> dict:
    model = vit.make_model(variant, classes, pool_type="gap", remat=remat, scan=scan, dtype=dtype)
    tx = optim.make_optimizer(optimizer, 1e-3)
    shape = (image_size, image_size, channels)
    trainer = loop.make_trainer(model, tx, mesh, image_shape=shape)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.eval_shape(trainer.init_fn),
        trainer.state_shardings,
    )
    bsh = sharding.batch_sharding(mesh)
    abstract_batch = {
        "image": jax.ShapeDtypeStruct((batch, *shape), jnp.float32, sharding=bsh),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bsh),
    }
    t0 = time.time()
    compiled = trainer.train_step.lower(abstract, abstract_batch).compile()
    seconds = time.time() - t0
    m = compiled.memory_analysis()
    params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    row = {
        "remat": remat,
        "scan": scan,
        "compile_s": seconds,
        "params": params,
        "argument": m.argument_size_in_bytes,
        "output": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "code": m.generated_code_size_in_bytes,
    }
    row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="S/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--optimizer", default="adafactor", choices=optim.OPTIMIZERS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--mesh", type=int, nargs=2, default=[1, 1], metavar=("DATA", "FSDP"))
    args = parser.parse_args()
    n = int(np.prod(args.mesh))
    mesh = sharding.make_mesh(args.mesh, devices=jax.devices()[:n])
    print(
        f"{args.variant} at {args.image_size} px, batch {args.batch}, {args.optimizer}, {args.dtype} activations, "
        f"mesh {args.mesh} on {jax.devices()[0].platform}; MiB per device"
    )
    head = "| remat | scan | argument | output | aliased | temp | peak | code | compile s |"
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for remat in (False, True):
        for scan in (False, True):
            r = measure(
                args.variant,
                args.image_size,
                args.channels,
                args.batch,
                args.classes,
                args.optimizer,
                args.dtype,
                remat,
                scan,
                mesh,
            )
            rows.append(r)
            print(
                f"| {'yes' if remat else 'no'} | {'yes' if scan else 'no'} | {r['argument'] / MiB:.1f} | "
                f"{r['output'] / MiB:.1f} | {r['alias'] / MiB:.1f} | {r['temp'] / MiB:.1f} | "
                f"{r['peak'] / MiB:.1f} | {r['code'] / MiB:.1f} | {r['compile_s']:.1f} |",
                flush=True,
            )
    base = rows[0]
    print(
        f"\n{base['params'] / 1e6:.2f}M parameters. Temporaries relative to no remat / no scan: "
        + ", ".join(
            f"remat={'yes' if r['remat'] else 'no'} scan={'yes' if r['scan'] else 'no'}: "
            f"{r['temp'] / base['temp']:.2f}x"
            for r in rows[1:]
        )
    )


if __name__ == "__main__":
    main()
