"""Train a tokenizer: ``python train.py experiment=NAME key=value ...`` (see configs/train.yaml)."""

import hydra
from omegaconf import DictConfig

import vtok.config  # noqa: F401  (registers the config resolvers before Hydra composes)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from vtok.experiment import run, summary

    result = run(cfg)
    if result["is_global_zero"]:
        print(summary(result))


if __name__ == "__main__":
    main()
