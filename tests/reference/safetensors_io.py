"""Minimal safetensors reader and writer for tapegrad's reference scripts.

What this is for: the golden-file scripts in tests/reference/ write their inputs and
expected outputs as safetensors files, and read them back in their self-checks, without
the `safetensors` package (not installed here). The format, as the safetensors
specification defines it:

    8 bytes    N, the header length, unsigned 64-bit little-endian
    N bytes    a UTF-8 JSON object: for each tensor name
                   {"dtype": "F64", "shape": [2, 3], "data_offsets": [begin, end]}
               plus an optional "__metadata__" object mapping strings to strings.
               Offsets are relative to the first byte after the header.
    rest       the tensor data, little-endian, C order, packed back to back.

What it writes: F32 and F64 (F16 and BF16 too, so tests of readers can be fed such files).
What it reads: F64, F32, F16, BF16, and the integer types I64, I32, I16, I8, U8, BOOL.
What it is not: a general library. No memory-mapping, no lazy loading, no torch.save
interop; the whole file is read into memory (the golden files are small).
"""

import json
import struct

import numpy as np
import torch

# dtype name -> (numpy dtype as stored, bytes per element)
_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw 16-bit patterns, widened by hand below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

_WRITE_DTYPES = ("F64", "F32", "F16", "BF16")


def _bf16_bits_to_f32(bits):
    """bits is a uint16 array of bfloat16 patterns; returns the exact float32 values."""
    flat = bits.reshape(-1).astype(np.uint32) << 16
    return flat.view(np.float32).reshape(bits.shape)


def _f32_to_bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bit pattern (uint16). NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    u = x.view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    out = ((u + rounding) >> 16).astype(np.uint16)
    out[np.isnan(x)] = 0x7FC0
    return out


def encode(tensors, metadata=None, dtype="F64"):
    """Returns the bytes of a safetensors file.

    tensors: mapping name -> torch.Tensor or numpy array (any float dtype; converted to `dtype`).
    metadata: optional mapping str -> str, stored as "__metadata__".
    dtype: one of F64, F32, F16, BF16, or a mapping name -> dtype for per-tensor choice.
    Tensors are stored in sorted name order; the header is padded with spaces to a
    multiple of 8 bytes so that the data starts aligned (as the reference writer does).
    """
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("safetensors metadata must map str to str, got %r: %r" % (k, v))
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a valid tensor name")
        t = tensors[name]
        if isinstance(t, torch.Tensor):
            a = t.detach().cpu().to(torch.float64).numpy()
        else:
            a = np.asarray(t, dtype=np.float64)
        dt = dtype[name] if isinstance(dtype, dict) else dtype
        if dt not in _WRITE_DTYPES:
            raise ValueError("cannot write dtype %r (only %s)" % (dt, ", ".join(_WRITE_DTYPES)))
        if dt == "BF16":
            raw = _f32_to_bf16_bits(a.astype(np.float32)).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(a.astype(_NUMPY_DTYPES[dt])).tobytes()
        header[name] = {
            "dtype": dt,
            "shape": [int(s) for s in a.shape],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def save(path, tensors, metadata=None, dtype="F64"):
    """Writes `tensors` (name -> tensor) to `path`; see encode()."""
    data = encode(tensors, metadata, dtype)
    with open(path, "wb") as f:
        f.write(data)


def decode(data, to_float64=False):
    """Parses safetensors bytes. Returns (tensors, metadata).

    tensors maps name -> torch.Tensor: F64 -> float64, F32/F16/BF16 -> float32 (exact
    widening) or float64 if to_float64, integers -> int64, BOOL -> bool.
    Raises ValueError on any malformed input (bad length, bad JSON, bad entries,
    offsets out of range, overlapping or leaving holes).
    """
    if len(data) < 8:
        raise ValueError("safetensors: file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("safetensors: header length %d exceeds file size %d" % (n, len(data)))
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError("safetensors: header is not valid JSON: %s" % e)
    if not isinstance(header, dict):
        raise ValueError("safetensors: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    body = data[8 + n:]
    tensors = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError("safetensors: bad entry for %r: %r" % (name, info))
        dt = info["dtype"]
        if dt not in _NUMPY_DTYPES:
            raise ValueError("safetensors: unsupported dtype %r for %r" % (dt, name))
        shape = info["shape"]
        begin, end = info["data_offsets"]
        if any((not isinstance(s, int)) or s < 0 for s in shape):
            raise ValueError("safetensors: bad shape %r for %r" % (shape, name))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nd = _NUMPY_DTYPES[dt]
        if not (0 <= begin <= end <= len(body)):
            raise ValueError("safetensors: offsets %r of %r out of range (data is %d bytes)"
                             % ([begin, end], name, len(body)))
        if end - begin != count * nd.itemsize:
            raise ValueError("safetensors: %r has %d bytes, shape %r of %s needs %d"
                             % (name, end - begin, shape, dt, count * nd.itemsize))
        spans.append((begin, end, name))
        a = np.frombuffer(body, dtype=nd, count=count, offset=begin).reshape(shape)
        if dt == "BF16":
            a = _bf16_bits_to_f32(a)
        if a.dtype.kind == "f":
            a = a.astype(np.float64 if (to_float64 or dt == "F64") else np.float32)
        elif a.dtype.kind in "iu":
            a = a.astype(np.int64)
        tensors[name] = torch.from_numpy(np.array(a))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError("safetensors: %r starts at %d, expected %d (overlap or hole)"
                             % (name, begin, pos))
        pos = end
    if pos != len(body):
        raise ValueError("safetensors: %d trailing bytes after the last tensor" % (len(body) - pos))
    return tensors, metadata


def load(path, to_float64=False):
    """Reads a safetensors file; returns (tensors, metadata). See decode()."""
    with open(path, "rb") as f:
        return decode(f.read(), to_float64)


def _self_test():
    g = torch.Generator().manual_seed(0)
    ts = {
        "a": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "b.c": torch.randn(5, generator=g, dtype=torch.float64),
        "s": torch.tensor(2.5, dtype=torch.float64),
        "e": torch.zeros(0, 3, dtype=torch.float64),
    }
    # F64 round trip is exact, metadata survives.
    back, meta = decode(encode(ts, {"k": "v"}))
    assert meta == {"k": "v"}
    for k in ts:
        assert back[k].dtype == torch.float64 and back[k].shape == ts[k].shape
        assert torch.equal(back[k], ts[k]), k
    # F32, F16 and BF16: compare against torch's own conversions.
    for dt, tdt in (("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16)):
        back, _ = decode(encode(ts, dtype=dt))
        for k in ts:
            ref = ts[k].to(tdt).to(torch.float32)
            assert torch.equal(back[k], ref), (dt, k)
    # Header layout: 8-aligned data start, sorted names.
    raw = encode(ts)
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    # Malformed inputs are rejected.
    bad = [raw[:4], struct.pack("<Q", 10 ** 9) + raw[8:], raw[:-1], raw + b"\0",
           struct.pack("<Q", 2) + b"{]"]
    for b in bad:
        try:
            decode(b)
        except ValueError:
            continue
        raise AssertionError("malformed safetensors accepted")


if __name__ == "__main__":
    _self_test()
    print("safetensors_io self-test passed")
