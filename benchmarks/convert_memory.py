"""Peak memory of ``vlmtune convert --from robo2vlm`` on a large synthetic shard folder.

Builds a Robo2VLM-shaped folder (``train-*``/``test-*`` Parquet shards, ``image`` as
``{bytes, path}`` structs) of about ``--size-gb`` of image payload, converts it in a fresh
subprocess and prints that process's peak resident memory (``ru_maxrss``) and throughput.

Images are real 16x16 PNGs padded with a private ancillary chunk of random bytes (valid
CRC), so the converter's image check (PIL ``verify``) passes while building stays fast; each
payload is unique and the input is written without dictionary encoding or compression, so
the folder really holds ``--size-gb`` of data.

    python benchmarks/convert_memory.py                 # 2 GB, target < 1.5 GB resident
    python benchmarks/convert_memory.py --size-gb 0.2 --keep --dir /tmp/robo-bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

LIMIT_BYTES = int(1.5 * 2**30)
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("choices", pa.string()),
                    ("correct_answer", pa.int64()), ("image", IMAGE_TYPE)])


def padded_png(pad: bytes, row: int) -> bytes:
    """A valid PNG whose size is dominated by a private ``zzPd`` chunk holding ``pad``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (row % 256, 80, 160)).save(buf, format="PNG")
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    body = b"zzPd" + row.to_bytes(8, "big") + pad
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return data[:iend] + chunk + data[iend:]


def build(folder: Path, size_gb: float, image_kb: int, shards: int, row_group: int) -> tuple[int, int]:
    """Write the shard folder; return (rows, bytes on disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_bytes = image_kb * 1024
    rows = max(shards, int(size_gb * 2**30 / image_bytes))
    pool = os.urandom(64 * 2**20)
    per_shard = -(-rows // shards)
    n_test = max(1, shards // 4)
    row = 0
    for s in range(shards):
        split, k = ("test", s) if s < n_test else ("train", s - n_test)
        total = n_test if split == "test" else shards - n_test
        path = folder / f"{split}-{k:05d}-of-{total:05d}.parquet"
        with pq.ParquetWriter(path, SCHEMA, compression="none", use_dictionary=False) as w:
            for start in range(0, per_shard, row_group):
                batch = []
                for _ in range(min(row_group, per_shard - start, rows - row)):
                    off = (row * 7919) % (len(pool) - image_bytes)
                    batch.append({"id": f"r{row}", "question": f"Which gripper state in frame {row}?",
                                  "choices": "['open', 'closed', 'half open']", "correct_answer": row % 3,
                                  "image": {"bytes": padded_png(pool[off: off + image_bytes], row),
                                            "path": f"{row}.png"}})
                    row += 1
                if batch:
                    w.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    return row, size


CHILD = """
import json, resource, sys, time
from vlmtune.data.converters import convert
t0 = time.perf_counter()
r = convert("robo2vlm", sys.argv[1], sys.argv[2], progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"converted": r.converted, "skipped": r.skipped, "seconds": dt,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--image-kb", type=int, default=512, help="bytes per image payload, in KiB")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--row-group", type=int, default=64, help="input rows per Parquet row group")
    ap.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the input and output files")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="vlmtune-convert-bench-"))
    src, out = work / "robo2vlm", work / "out.parquet"
    try:
        t0 = time.perf_counter()
        rows, size = build(src, args.size_gb, args.image_kb, args.shards, args.row_group)
        print(f"built {rows} rows, {size / 2**30:.2f} GiB in {args.shards} shards "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = r["peak_rss_bytes"]
        print(f"converted {r['converted']} rows, skipped {r['skipped']} rows in {r['seconds']:.1f} s")
        print(f"throughput: {size / 2**20 / r['seconds']:.1f} MiB/s, {r['converted'] / r['seconds']:.0f} rows/s")
        print(f"output: {out.stat().st_size / 2**30:.2f} GiB")
        ok = peak < LIMIT_BYTES
        verdict = "OK" if ok else "EXCEEDED"
        print(f"peak RSS: {peak / 2**20:.0f} MiB (target < {LIMIT_BYTES / 2**20:.0f} MiB: {verdict})")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            out.unlink(missing_ok=True)
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
