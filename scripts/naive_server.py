"""The naive baseline of scripts/bench_serving.py as a server: one process, a plain FastAPI endpoint under
uvicorn doing the whole request with the trained torch models in eager mode (no batching, no Triton, no Ray).

    python scripts/naive_server.py --dlrm-run <run> --two-tower-run <run> --dataset <dataset> \\
        --items <two-tower export>/items --port 8200

(No ``from __future__ import annotations``: FastAPI must see the request model as a class.)
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--dlrm-run", "--two-tower-run", "--dataset", "--items"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    import uvicorn
    from bench_serving import Naive
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    from recsys.cli.export import final_checkpoint

    naive = Naive(args.dataset, final_checkpoint(args.dlrm_run), final_checkpoint(args.two_tower_run),
                  Path(args.items))
    api = FastAPI(title="naive recommender")

    class Body(BaseModel):
        user_id: int
        k: int = 10

    @api.post("/recommend")
    def recommend(body: Body) -> dict:
        items = naive.recommend(body.user_id, body.k)
        if items is None:
            raise HTTPException(404, "unknown user")
        return {"user_id": body.user_id, "items": [{"item_id": i} for i in items], "degraded": False}

    @api.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(api, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
