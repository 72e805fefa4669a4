"""Train the forager's model in two stages: the head with the backbone frozen, then the top of the
backbone (batch norm frozen) at a lower rate. EfficientNetV2 is the study's model; any registry
model trains the same way (the demo's is mobilenet_v2, from config).

    .venv/bin/python train_efficientnet_v2.py --config configs/demo.yaml
    .venv/bin/python train_efficientnet_v2.py --variant m                      # EfficientNetV2-M, config.yaml

--variant m|s|b0 sets model.name=efficientnet_v2_<variant> (it wins over --set); without it the
config's model.name trains. Writes models/<run_name>/ (default run name: <experiment>-<model.name>):
model.keras, meta.json, history.json, config.resolved.yaml. Logs to W&B (offline unless an API key
is configured).
"""
from mushroom import cli, training_run


def main(argv=None) -> int:
    parser = training_run.argument_parser(__doc__)
    parser.add_argument("--variant", choices=("m", "s", "b0"), default=None,
                        help="EfficientNetV2 size: m (study), s, b0 (quick CPU runs); default: config model.name")
    return training_run.cli_main(parser, argv,
                             lambda args, cfg: [f"model.name=efficientnet_v2_{args.variant}"] if args.variant else [])


if __name__ == "__main__":
    cli.run(main)
