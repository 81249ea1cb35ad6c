#!/usr/bin/env python3
"""tools/cuda/check_twins.py -- the one part of the CUDA backend the CPU
emulation cannot execute is the glue that is written twice: the launchers
`launch_<k>` (ldm/backend/ops_cuda.cu with <<<grid, threads>>>, ldm/backend/ops_cuda_emu.c with
loops) and the `__global__` wrappers that forward their arguments to the
kernel bodies of ldm/backend/cuda_kernels.h. A swapped pair of int64_t arguments
there would compile silently and only fail on a GPU. This script checks, for
every elementwise/layout kernel, that
  1. each __global__ k_<name>(params) calls its body with IDX then exactly
     its params, in order;
  2. both launch_<name> take the same parameter types in the same order;
  3. both pass the same parameters, by position, to the kernel / body;
  4. both launch the same number of blocks.
The phase kernels (layer/group norm, softmax rows) are compared by eye: see
docs/08-cuda.md. Run by `make test-cuda`; exit status 1 on any mismatch.
"""
import re
import sys

cu = open("ldm/backend/ops_cuda.cu").read()
emu = open("ldm/backend/ops_cuda_emu.c").read()
bad = 0


def params(text):
    """'float *out, const float *x, int64_t n' -> (['float*', 'constfloat*', 'int64_t'], ['out', 'x', 'n'])"""
    types, names = [], []
    for p in text.split(","):
        p = " ".join(p.split())
        if not p:
            continue
        name = re.split(r"[\s*]+", p)[-1]
        types.append(p[: len(p) - len(name)].replace(" ", ""))
        names.append(name)
    return types, names


def args(text):
    return [" ".join(a.split()) for a in text.split(",")]


checks = 0


def report(ok, what):
    global bad, checks
    print(("  ok      " if ok else "  NOT OK  ") + what)
    bad += not ok
    checks += 1


# 1. __global__ wrappers forward everything, in order.
for m in re.finditer(r"__global__ void (k_\w+)\(([^)]*)\)\s*\{\s*ldm_k_\w+\(IDX,(.*?)\);\s*\}", cu, re.S):
    k, ps, a = m.groups()
    report(params(ps)[1] == args(a), f"{k}: forwards its parameters in order")


def launchers(src):
    return {m.group(1): m.groups()[1:] for m in
            re.finditer(r"static void (launch_\w+)\(([^)]*)\)\s*\{(.*?)\n\}", src, re.S)}


C, E = launchers(cu), launchers(emu)
for name, (cps, cbody) in C.items():
    if name == "launch_check":
        continue
    if name not in E:
        report(False, f"{name}: missing in ops_cuda_emu.c")
        continue
    eps, ebody = E[name]
    (ct, cn), (et, en) = params(cps), params(eps)
    report(ct == et, f"{name}: same parameter types")
    ecall = re.search(r"ldm_k_\w+\(emu_at\(b, nb\), emu_at\(t, NT\), NT,(.*?)\);", ebody, re.S)
    if not ecall:
        print(f"  (phase kernel) {name}: compare by eye")
        continue
    ccall = re.search(r"<<<grid\((.*?)\), NT>>>\((.*?)\);", cbody, re.S)
    cpos = [cn.index(a) for a in args(ccall.group(2))]
    epos = [en.index(a) for a in args(ecall.group(1))]
    report(cpos == epos, f"{name}: same arguments to the kernel, by position")
    nb = re.search(r"int64_t nb = (.*?);", ebody)
    # same block count expression, with the parameter names mapped by position
    cgrid = ccall.group(1)
    egrid = nb.group(1) if nb else ""
    for i, n in enumerate(en):
        egrid = re.sub(rf"\b{n}\b", f"@{i}", egrid)
    for i, n in enumerate(cn):
        cgrid = re.sub(rf"\b{n}\b", f"@{i}", cgrid)
    report(cgrid == egrid, f"{name}: same number of blocks")

print(f"twins: {checks} checks, {bad} mismatches")
sys.exit(1 if bad else 0)
