"""Train the ResNet50 baseline: the same training as train_efficientnet_v2.py, head only.

    .venv/bin/python train_resnet_baseline.py --config configs/demo.yaml --set model.weights=null

Forces model.name=resnet50 and train.stage2.epochs=0 (the backbone stays frozen); everything else
comes from the config. Writes models/<run_name>/ (default: <experiment>-resnet50).
"""
from mushroom import cli, training


def main(argv=None) -> int:
    parser = training.argument_parser(__doc__)
    return training.cli_main(parser, argv, lambda args: ["model.name=resnet50", "train.stage2.epochs=0"])


if __name__ == "__main__":
    cli.run(main)
