"""`dermmobile predict`: top-k conditions for image files, from a checkpoint or an exported artifact."""

from __future__ import annotations

from pathlib import Path

HELP = "classify images with a checkpoint or an exported artifact (research use only, not a diagnosis)"


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", required=True, type=Path, help="a .safetensors checkpoint or an exported artifact")
    parser.add_argument("--topk", type=int, default=3, help="how many classes to show (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import json

    from dermmobile.errors import EXIT_BAD_INPUT
    from dermmobile.predict import load_predictor, predict_files

    predictor = load_predictor(args.model)
    results = predict_files(predictor, args.images, args.topk)
    if args.json:
        print(json.dumps({"model": predictor.source, "note": "research tool, not a diagnosis", "results": results}, indent=2))
    else:
        for result in results:
            if "error" in result:
                print(f"{result['image']}: error: {result['error']}")
                continue
            tops = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in result["top"])
            print(f"{result['image']}: {tops}")
        print("research tool, not a diagnosis")
    return EXIT_BAD_INPUT if any("error" in r for r in results) else 0
