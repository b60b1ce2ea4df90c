"""Train a tokenizer: ``python train.py experiment=NAME key=value ...`` (see configs/train.yaml)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from vtok.training.run import train

    result = train(cfg)
    if "report" in result:
        print(f"report: {result['report']['report_path']}")
        print(f"reconstructions: {result['report']['reconstructions_path']}")


if __name__ == "__main__":
    main()
