"""The serving baseline for `jobs/bench.py serve`: one uvicorn process, FastAPI, the same model and
preprocessing as raycv's Serve app, one image per forward pass, no Ray. Not for production.

    python jobs/baseline_server.py --checkpoint PATH --port 8100 [--threads 2] [--device cuda]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: compare like with like")
    args = parser.parse_args()

    import torch
    import uvicorn
    from fastapi import FastAPI, Request

    from raycv.checkpoint import load_model
    from raycv.data.images import decode_image
    from raycv.inference import predict

    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint, device=torch.device(args.device))
    app = FastAPI()

    @app.post("/v1/{task}/predict")
    async def answer(task: str, request: Request):
        return {"task": task, "predictions": predict(loaded, [decode_image(await request.body())])}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
