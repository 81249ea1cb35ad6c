"""gdb helpers for ldm.c: see tensors while stepping through the C.

    (gdb) source tools/gdb/ldm.py          # or: gdb -x tools/gdb/gdbinit build/debug/sd
    (gdb) p *x                             # pretty printer: shape, backend, first values
    (gdb) ldm-stats x                      # min/max/mean/std/NaN count, computed in gdb
    (gdb) ldm-describe x                   # calls ldm_tensor_describe(&x, "x") in the program
    (gdb) ldm-save x /tmp/x.npy            # calls ldm_npy_write_tensor: open it with numpy
    (gdb) ldm-shape x

EXPR may be an ldm_tensor or a pointer to one. The pretty printer and
ldm-stats read host memory directly (backends "ref", "cpu", "cuda-emu"), so
they work on a core file too; on "cuda" use ldm-describe, which copies the
tensor to the host inside the program. Nothing here changes program state
except ldm-save (it writes a file).
"""
import math
import struct

import gdb

HOST_BACKENDS = ("ref", "cpu", "cuda-emu")


def _tensor(val):
    """gdb.Value of an ldm_tensor (dereferences a pointer)"""
    if val.type.strip_typedefs().code == gdb.TYPE_CODE_PTR:
        val = val.dereference()
    return val


def _shape(t):
    nd = int(t["ndim"])
    return [int(t["shape"][i]) for i in range(max(0, min(nd, 8)))]


def _backend(t):
    ops = t["ops"]
    if int(ops) == 0:
        return None
    try:
        return ops.dereference()["name"].string()
    except gdb.error:
        return "?"


def _read(t, n):
    """first n floats of a host tensor, or None"""
    if int(t["data"]) == 0 or _backend(t) not in HOST_BACKENDS:
        return None
    n = min(n, int(t["numel"]))
    if n <= 0:
        return []
    mem = gdb.selected_inferior().read_memory(int(t["data"]), 4 * n)
    return list(struct.unpack(f"<{n}f", bytes(mem)))


class TensorPrinter:
    def __init__(self, val):
        self.val = val

    def to_string(self):
        t = self.val
        shape = ",".join(str(s) for s in _shape(t))
        be = _backend(t)
        if int(t["data"]) == 0:
            return f"ldm_tensor [{shape}] (no data)"
        first = _read(t, 6)
        vals = "device memory" if first is None else \
            ", ".join(f"{v:.6g}" for v in first) + (" ..." if int(t["numel"]) > 6 else "")
        view = "" if int(t["owns"]) else " view"
        return f"ldm_tensor [{shape}] {be}{view} = {{{vals}}}"


def _lookup(val):
    t = val.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_STRUCT and t.tag == "ldm_tensor":
        return TensorPrinter(val)
    return None


class Stats(gdb.Command):
    """ldm-stats EXPR: shape, min, max, mean, std and NaN/Inf count of a host tensor."""

    def __init__(self):
        super().__init__("ldm-stats", gdb.COMMAND_DATA, gdb.COMPLETE_EXPRESSION)

    def invoke(self, arg, from_tty):
        t = _tensor(gdb.parse_and_eval(arg))
        n = int(t["numel"])
        v = _read(t, n)
        if v is None:
            print(f"{arg}: not in host memory (backend {_backend(t)}); use ldm-describe")
            return
        finite = [x for x in v if math.isfinite(x)]
        bad = n - len(finite)
        if not finite:
            print(f"{arg} {_shape(t)}: no finite values ({bad} NaN/Inf)")
            return
        mean = sum(finite) / len(finite)
        std = math.sqrt(sum((x - mean) ** 2 for x in finite) / len(finite))
        print(f"{arg} {_shape(t)} {_backend(t)}: min {min(finite):.6g} max {max(finite):.6g} "
              f"mean {mean:.6g} std {std:.6g} nonfinite {bad}")


class Describe(gdb.Command):
    """ldm-describe EXPR: call ldm_tensor_describe(&EXPR, "EXPR") in the program (any backend)."""

    def __init__(self):
        super().__init__("ldm-describe", gdb.COMMAND_DATA, gdb.COMPLETE_EXPRESSION)

    def invoke(self, arg, from_tty):
        v = gdb.parse_and_eval(arg)
        addr = f"({arg})" if v.type.strip_typedefs().code == gdb.TYPE_CODE_PTR else f"&({arg})"
        name = arg.replace('"', "'")
        gdb.execute(f'call (void)ldm_tensor_describe({addr}, "{name}")', to_string=False)
        gdb.execute("call (int)fflush(0)", to_string=True)


class Save(gdb.Command):
    """ldm-save EXPR FILE.npy: write the tensor with ldm_npy_write_tensor (open with numpy.load)."""

    def __init__(self):
        super().__init__("ldm-save", gdb.COMMAND_DATA, gdb.COMPLETE_EXPRESSION)

    def invoke(self, arg, from_tty):
        parts = arg.rsplit(None, 1)
        if len(parts) != 2:
            raise gdb.GdbError("usage: ldm-save EXPR FILE.npy")
        expr, path = parts
        v = gdb.parse_and_eval(expr)
        addr = f"({expr})" if v.type.strip_typedefs().code == gdb.TYPE_CODE_PTR else f"&({expr})"
        rc = gdb.parse_and_eval(f'(int)ldm_npy_write_tensor("{path}", {addr})')
        print(f"wrote {path}" if int(rc) == 0 else f"ldm-save failed ({int(rc)})")


class Shape(gdb.Command):
    """ldm-shape EXPR: the shape of a tensor."""

    def __init__(self):
        super().__init__("ldm-shape", gdb.COMMAND_DATA, gdb.COMPLETE_EXPRESSION)

    def invoke(self, arg, from_tty):
        t = _tensor(gdb.parse_and_eval(arg))
        print(f"{arg}: [{','.join(str(s) for s in _shape(t))}] numel {int(t['numel'])} "
              f"backend {_backend(t)}")


gdb.pretty_printers.append(_lookup)
Stats()
Describe()
Save()
Shape()
print("ldm.c gdb helpers: p *t | ldm-stats t | ldm-describe t | ldm-save t FILE.npy | ldm-shape t")
