"""Train EfficientNetV2 on the imported photos in two stages (head, then the top of the backbone).

    .venv/bin/python train_efficientnet_v2.py --variant b0 --config configs/demo.yaml --set model.weights=null

--variant m|s|b0 (default m) sets model.name=efficientnet_v2_<variant> (it wins over --set).
Writes models/<run_name>/ (default run name: <experiment>-efficientnet_v2_<variant>): model.keras,
meta.json, history.json, config.resolved.yaml. Logs to W&B (offline unless an API key is configured).
"""
from mushroom import cli, training


def main(argv=None) -> int:
    parser = training.argument_parser(__doc__)
    parser.add_argument("--variant", choices=("m", "s", "b0"), default="m",
                        help="EfficientNetV2 size: m (study), s, b0 (quick CPU runs); default m")
    return training.cli_main(parser, argv, lambda args: [f"model.name=efficientnet_v2_{args.variant}"])


if __name__ == "__main__":
    cli.run(main)
