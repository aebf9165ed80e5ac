"""Measures ScoreBatch throughput end to end: `python -m services.scoring.batch_bench [--rows N] [--features F]`.

Trains a demo-sized model (F features, up to 200 trees of depth 5) into a temporary folder, starts the real scoring
service on port 0 (SQLite registry) in a child process, and streams N customer-offer rows through ScoreBatch in
requests of --request-rows rows. Reports rows per second including client-side encoding and decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def train_bench_model(models_dir: Path, features: int, *, spread: bool = False) -> list[str]:
    """A demo-sized model (`features` columns f00.., up to 200 trees of depth 5) as version "bench"; its names.

    `spread`: the label depends on many features (half of them through a sine), so early stopping keeps all 200
    trees, every tree splits on several features — a production-sized model; else three features carry the signal.
    """
    from services.scoring.training import train_binary_model

    rng = np.random.default_rng(0)
    names = [f"f{i:02d}" for i in range(features)]
    x = rng.normal(size=(20_000, features))
    if spread:
        z = 0.6 * np.sin(x[:, : features // 2]).sum(axis=1) + x[:, 0] * x[:, 1] + 0.15 * x[:, -10:].sum(axis=1)
        y = (z + rng.normal(size=20_000) > 0).astype(int)
    else:
        y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(size=20_000) > 0.5).astype(int)
    rows = [dict(zip(names, row, strict=True)) for row in x.tolist()]
    meta = train_binary_model(rows, y.tolist(), feature_names=names, models_dir=models_dir, version="bench")
    print(f"model: {features} features, {meta.params['trees']} trees of depth 5", flush=True)
    return names


async def _run(port: int, names: list[str], rows: int, request_rows: int) -> None:
    from nextbest.scoring.v1 import scoring_service_pb2 as pb
    from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc

    from libs.clients import open_channel

    rng = np.random.default_rng(1)
    values = rng.normal(size=(request_rows, len(names)))
    request = pb.ScoreBatchRequest(columns=names, values=values.ravel().tolist())
    async with open_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        [_ async for _ in stub.ScoreBatch(request, timeout=60)]  # warm-up
        started = time.perf_counter()
        scored = 0
        while scored < rows:
            async for chunk in stub.ScoreBatch(request, timeout=60):
                scored += len(chunk.predictions)
        seconds = time.perf_counter() - started
    print(f"ScoreBatch: {scored} rows x {len(names)} features in {seconds:.2f} s = {scored / seconds:,.0f} rows/s "
          f"({request_rows} rows per request)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--request-rows", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = train_bench_model(root / "models", args.features)
        env = {**os.environ, "NEXTBEST_DATA_DIR": str(root), "NEXTBEST_SCORING_PORT": "0",
               "NEXTBEST_SCORING_MODELS_DIR": str(root / "models"), "NEXTBEST_LOG_LEVEL": "WARNING"}
        port_file = root / "port"
        code = (
            "import asyncio,sys; from libs.server import GrpcServer; from libs.settings import load_settings;"
            "from services.scoring.app import build; from services.scoring.settings import ScoringSettings\n"
            "async def main():\n"
            "    server = GrpcServer(build(load_settings(ScoringSettings)))\n"
            "    port = await server.start()\n"
            f"    open({str(port_file)!r}, 'w').write(str(port))\n"
            "    await asyncio.Event().wait()\n"
            "asyncio.run(main())\n"
        )
        server = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the scoring service did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            asyncio.run(_run(int(port_file.read_text()), names, args.rows, args.request_rows))
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
