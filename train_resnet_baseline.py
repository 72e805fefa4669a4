"""Train the head-only baseline: a new classifier on a frozen pretrained backbone, nothing else.

    .venv/bin/python train_resnet_baseline.py                            # ResNet50 + ImageNet (config.yaml)
    .venv/bin/python train_resnet_baseline.py --config configs/demo.yaml # MobileNetV2 from the int8 checkpoint

The backbone and its weights come from the config's `baseline` section (model, weights), the rest
(data, head, stage 1 schedule) from the same config as train_efficientnet_v2.py; stage 2 is off.
ResNet50 is the baseline for users with ImageNet weights; offline, the demo uses the MobileNetV2
checkpoint instead (a head on a from-scratch ResNet50 learns nothing). Writes
models/<run_name>/ (default: <experiment>-<baseline.model>-head).
"""
from mushroom import cli, training_run


def main(argv=None) -> int:
    parser = training_run.argument_parser(__doc__)
    return training_run.cli_main(parser, argv, lambda args, cfg: training_run.baseline_overrides(cfg),
                             run_name=training_run.baseline_run_name)


if __name__ == "__main__":
    cli.run(main)
