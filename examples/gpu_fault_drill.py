"""GPU fault drill: real torch CUDA training under the preloaded shim, one interposer fault.

Run as a rank (it is started by tests/gpu/test_gpu_faults.py with LD_PRELOAD set and a
fake supervisor socket in JITC_SOCKET):

    python examples/gpu_fault_drill.py KIND [--arm-step 3] [--steps 8]

KIND is cuda-error, nccl-error or nccl-hang. A one-rank NCCL process group makes the
gradient all-reduce a real ncclAllReduce. The fault is armed at --arm-step through the shim
(jitc_fault_arm) and fires at the next interposed CUDA/NCCL call. Prints one summary line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["cuda-error", "nccl-error", "nccl-hang"])
    ap.add_argument("--arm-step", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--linger", type=float, default=3.0, help="seconds to stay alive after")
    args = ap.parse_args()

    import torch
    import torch.distributed as dist
    from jitc._shim import check, ffi_lib

    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    ffi, lib = ffi_lib()
    check(lib.jitc_init(0, 0, 1, 0, 1), "jitc_init")

    model = torch.nn.Linear(256, 256).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    outcome = "completed"
    try:
        for step in range(args.steps):
            lib.jitc_step_begin(step)
            if step == args.arm_step:
                check(lib.jitc_fault_arm(args.kind.encode()), "jitc_fault_arm")
            loss = model(torch.randn(64, 256, device="cuda")).square().mean()
            loss.backward()
            for p in model.parameters():
                dist.all_reduce(p.grad)
            opt.step()
            opt.zero_grad()
            torch.cuda.synchronize()
    except Exception as e:  # the injected CUDA/NCCL error surfaces as a torch error
        outcome = f"raised {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    time.sleep(args.linger)   # nccl-hang: give the watchdog time past the hang timeout
    print(f"drill kind={args.kind} outcome={outcome}", flush=True)
    lib.jitc_shutdown(0)
    os._exit(0)   # a rank with a poisoned CUDA context must not run CUDA teardown


if __name__ == "__main__":
    sys.exit(main())
