"""Train a tokenizer: ``python train.py experiment=NAME key=value ...`` (see configs/train.yaml)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from vtok.training.run import train

    result = train(cfg)
    report = result.get("report")
    if report:
        print(f"\nheld-out PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f} at {report['bits_per_pixel']:.4f} "
              f"bits per pixel on {report['num_images']} images ({result['train_steps']} steps, "
              f"{result['train_seconds']:.0f} s of training)")
        if "jpeg" in report:
            print(f"  JPEG at {report['jpeg']['bits_per_pixel']:.4f} bpp: {report['jpeg']['psnr']:.2f} dB; "
                  f"patch-mean tokenizer at {report['patch_mean']['bits_per_pixel']:.4f} bpp: "
                  f"{report['patch_mean']['psnr']:.2f} dB")
        if "codebook_usage" in report:
            print(f"  codebook usage {report['codebook_usage']:.1%} on held-out images "
                  f"(uniform bound {report['codebook_usage_uniform_bound']:.1%}), perplexity {report['perplexity']:.0f}")
        print(f"report: {report['report_path']}")
        print(f"reconstructions: {report['reconstructions_path']}")


if __name__ == "__main__":
    main()
